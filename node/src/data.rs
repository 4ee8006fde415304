//! The bank's data, seen through DataFusion: table registration, the
//! metadata-only catalog, and the party's local query turned into protocol
//! rows (canonical keys and `u64` features).

use std::collections::BTreeMap;
use std::path::PathBuf;

use cleanroom::Analysis;
use cleanroom::analysis::Grouping;
use cleanroom::keys::{KeyPart, KeyType, encode_part};
use std::pin::Pin;

use cleanroom::protocol::{Row, RowBatch};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Int64Type, UInt64Type};
use datafusion::datasource::file_format::options::ArrowReadOptions;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
use thiserror::Error;
use tokio_stream::{Stream, StreamExt};

/// Errors from the data layer. Messages name tables and columns, never
/// values — except [`DataError::Engine`], whose text comes from the query
/// engine and may quote the bank's data: the node never sends it to another
/// party (see [`DataError::for_peer`]) nor logs it; the operator sees it
/// with `cleanroom-node check`.
#[derive(Debug, Error)]
pub enum DataError {
    /// DataFusion failed (bad SQL, unreadable file, …).
    #[error("local query engine: {0}")]
    Engine(String),
    /// A table file has an extension we cannot read.
    #[error(
        "table {table:?}: unsupported file type {path:?} (use .csv, .parquet, .arrow, .ipc or .feather)"
    )]
    UnknownFormat {
        /// Table name.
        table: String,
        /// File path.
        path: PathBuf,
    },
    /// The query returned fewer columns than the key has parts.
    #[error(
        "query returns {got} columns but the key has {key_parts} parts (key columns come first)"
    )]
    TooFewColumns {
        /// Columns returned.
        got: usize,
        /// Declared key parts.
        key_parts: usize,
    },
    /// A key column has the wrong type.
    #[error("key column {column:?} has type {found}, but the analysis declares it {expected:?}")]
    KeyType {
        /// Column name.
        column: String,
        /// Declared type.
        expected: KeyType,
        /// Actual Arrow type.
        found: String,
    },
    /// A key column has a null.
    #[error("key column {column:?} contains a null")]
    NullKey {
        /// Column name.
        column: String,
    },
    /// A feature the analysis sums is not in the query output.
    #[error("query output has no feature column {column:?} (needed by the analysis)")]
    MissingFeature {
        /// Column name.
        column: String,
    },
    /// A feature column is not an integer column.
    #[error("feature column {column:?} has type {found}; features must be non-negative integers")]
    FeatureType {
        /// Column name.
        column: String,
        /// Actual Arrow type.
        found: String,
    },
    /// A feature column holds a negative value or a null.
    #[error("feature column {column:?} contains a negative value or a null")]
    BadFeatureValue {
        /// Column name.
        column: String,
    },
    /// The grouping party's query output lacks the group column.
    #[error("query output has no group column {column:?} (the analysis groups by it)")]
    MissingGroupColumn {
        /// Column name.
        column: String,
    },
    /// The group column holds a null or a label that is not declared.
    #[error(
        "group column {column:?} holds a null or a value that is not one of the analysis's declared groups"
    )]
    UnknownGroup {
        /// Column name.
        column: String,
    },
}

impl DataError {
    /// The message another party may see: engine errors (which may quote
    /// cell values) are reduced to their class; the others name only tables
    /// and columns.
    pub fn for_peer(&self) -> String {
        match self {
            DataError::Engine(_) => "the local query failed in the query engine (the node's \
                                     operator can see why with `cleanroom-node check`)"
                .to_string(),
            other => other.to_string(),
        }
    }
}

impl From<datafusion::error::DataFusionError> for DataError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        DataError::Engine(e.to_string())
    }
}

/// Registers every configured table in a fresh DataFusion context.
pub async fn load_tables(tables: &BTreeMap<String, PathBuf>) -> Result<SessionContext, DataError> {
    let ctx = SessionContext::new();
    for (name, path) in tables {
        let p = path.to_string_lossy();
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let dotted = format!(".{ext}");
        match ext.as_str() {
            "csv" => {
                ctx.register_csv(name, p.as_ref(), CsvReadOptions::new())
                    .await?
            }
            "parquet" => {
                ctx.register_parquet(name, p.as_ref(), ParquetReadOptions::default())
                    .await?
            }
            "arrow" | "ipc" | "feather" => {
                let opts = ArrowReadOptions {
                    file_extension: &dotted,
                    ..Default::default()
                };
                ctx.register_arrow(name, p.as_ref(), opts).await?
            }
            _ => {
                return Err(DataError::UnknownFormat {
                    table: name.clone(),
                    path: path.clone(),
                });
            }
        }
    }
    Ok(ctx)
}

/// One table of the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Table name.
    pub name: String,
    /// (column, Arrow type) pairs.
    pub columns: Vec<(String, String)>,
    /// Row count rounded to two significant digits.
    pub approx_rows: u64,
}

/// Rounds to two significant digits (so exact counts are not disclosed).
pub fn round_count(n: u64) -> u64 {
    if n < 100 {
        return n.div_ceil(10) * 10;
    }
    let mut scale = 1u64;
    while n / scale >= 100 {
        scale *= 10;
    }
    (n + scale / 2) / scale * scale
}

/// Names, columns, types and rounded row counts of the given tables. Never
/// rows.
pub async fn catalog(ctx: &SessionContext, tables: &[String]) -> Result<Vec<TableInfo>, DataError> {
    let mut out = Vec::new();
    for name in tables {
        let df = ctx.table(name.as_str()).await?;
        let columns = df
            .schema()
            .fields()
            .iter()
            .map(|f| (f.name().clone(), f.data_type().to_string()))
            .collect();
        let rows = df.count().await? as u64;
        out.push(TableInfo {
            name: name.clone(),
            columns,
            approx_rows: round_count(rows),
        });
    }
    Ok(out)
}

/// A stream of the local query's output as protocol row batches.
pub type RowBatches = Pin<Box<dyn Stream<Item = Result<RowBatch, DataError>> + Send>>;

/// Runs `party`'s query of the analysis and streams its output, one
/// [`RowBatch`] per record batch as the engine produces them: the first
/// `key.len()` columns are the key parts, the features named by the
/// analysis are looked up by column name (and the group column, for the
/// grouping party).
pub async fn local_batches(
    ctx: &SessionContext,
    analysis: &Analysis,
    party: &str,
) -> Result<RowBatches, DataError> {
    let sql = &analysis
        .parties
        .iter()
        .find(|p| p.name == party)
        .ok_or_else(|| DataError::Engine(format!("party {party} not in analysis")))?
        .sql;
    let stream = ctx.sql(sql).await?.execute_stream().await?;
    let key = analysis.key.clone();
    let features = analysis.features(party);
    let grouping = analysis.grouping.clone().filter(|g| g.party == party);
    Ok(Box::pin(stream.map(move |b| {
        batch_rows(&b?, &key, &features, grouping.as_ref())
    })))
}

/// The whole output of `party`'s query as rows (for checks and tests; the
/// node streams it with [`local_batches`]).
pub async fn local_rows(
    ctx: &SessionContext,
    analysis: &Analysis,
    party: &str,
) -> Result<Vec<Row>, DataError> {
    let mut batches = local_batches(ctx, analysis, party).await?;
    let mut rows = Vec::new();
    while let Some(b) = batches.next().await {
        let b = b?;
        let w = if b.is_empty() {
            0
        } else {
            b.features.len() / b.len()
        };
        for r in 0..b.len() {
            rows.push(Row {
                key: b.key(r).to_vec(),
                features: b.features[r * w..(r + 1) * w].to_vec(),
                group: b.groups.as_ref().map(|g| g[r]),
            });
        }
    }
    Ok(rows)
}

/// The group index of every row, from the group column (strings are
/// trimmed; integers are read in decimal).
fn group_indices(b: &RecordBatch, grouping: &Grouping) -> Result<Vec<u32>, DataError> {
    let column = grouping.column.clone();
    let idx = b
        .schema()
        .index_of(&column)
        .map_err(|_| DataError::MissingGroupColumn {
            column: column.clone(),
        })?;
    let col = b.column(idx);
    let unknown = || DataError::UnknownGroup {
        column: column.clone(),
    };
    if col.null_count() > 0 {
        return Err(unknown());
    }
    let labels = match col.data_type() {
        t if t.is_integer() => strict_cast(col, &DataType::Int64)?,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            strict_cast(col, &DataType::Utf8)?
        }
        _ => return Err(unknown()),
    };
    (0..b.num_rows())
        .map(|r| {
            let label = match labels.data_type() {
                DataType::Int64 => labels.as_primitive::<Int64Type>().value(r).to_string(),
                _ => labels.as_string::<i32>().value(r).trim().to_string(),
            };
            grouping.index(&label).map(|g| g as u32).ok_or_else(unknown)
        })
        .collect()
}

fn batch_rows(
    b: &RecordBatch,
    key: &[KeyType],
    features: &[String],
    grouping: Option<&Grouping>,
) -> Result<RowBatch, DataError> {
    let schema = b.schema();
    if b.num_columns() < key.len() {
        return Err(DataError::TooFewColumns {
            got: b.num_columns(),
            key_parts: key.len(),
        });
    }
    let mut key_cols = Vec::new();
    for (i, t) in key.iter().enumerate() {
        let name = schema.field(i).name().clone();
        let col = b.column(i);
        if col.null_count() > 0 {
            return Err(DataError::NullKey { column: name });
        }
        let ok = match t {
            KeyType::String => matches!(
                col.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ),
            KeyType::Integer => col.data_type().is_integer(),
        };
        if !ok {
            return Err(DataError::KeyType {
                column: name,
                expected: *t,
                found: col.data_type().to_string(),
            });
        }
        let target = match t {
            KeyType::String => DataType::Utf8,
            KeyType::Integer => DataType::Int64,
        };
        key_cols.push(strict_cast(col, &target).map_err(|_| DataError::KeyType {
            column: name,
            expected: *t,
            found: col.data_type().to_string(),
        })?);
    }
    let mut feat_cols = Vec::new();
    for f in features {
        let idx = (key.len()..b.num_columns())
            .find(|&i| schema.field(i).name() == f)
            .ok_or_else(|| DataError::MissingFeature { column: f.clone() })?;
        let col = b.column(idx);
        if !col.data_type().is_integer() {
            return Err(DataError::FeatureType {
                column: f.clone(),
                found: col.data_type().to_string(),
            });
        }
        if col.null_count() > 0 {
            return Err(DataError::BadFeatureValue { column: f.clone() });
        }
        // Casting to u64 with safe = false fails on negative values.
        let c = strict_cast(col, &DataType::UInt64)
            .map_err(|_| DataError::BadFeatureValue { column: f.clone() })?;
        feat_cols.push(c);
    }
    let n = b.num_rows();
    let mut out = RowBatch {
        keys: Vec::with_capacity(n * 24),
        ends: Vec::with_capacity(n),
        features: Vec::with_capacity(n * feat_cols.len()),
        groups: grouping.map(|g| group_indices(b, g)).transpose()?,
    };
    let ints: Vec<Option<&Int64Array>> = key_cols
        .iter()
        .map(|c| c.as_primitive_opt::<Int64Type>())
        .collect();
    let strs: Vec<Option<&StringArray>> =
        key_cols.iter().map(|c| c.as_string_opt::<i32>()).collect();
    let feats: Vec<&UInt64Array> = feat_cols
        .iter()
        .map(|c| c.as_primitive::<UInt64Type>())
        .collect();
    for r in 0..n {
        for (i, t) in key.iter().enumerate() {
            let part = match (t, strs[i], ints[i]) {
                (KeyType::String, Some(s), _) => KeyPart::Str(s.value(r)),
                (KeyType::Integer, _, Some(v)) => KeyPart::Int(v.value(r)),
                _ => unreachable!("key columns were cast to their declared types"),
            };
            encode_part(part, &mut out.keys);
        }
        out.ends.push(out.keys.len());
        out.features.extend(feats.iter().map(|c| c.value(r)));
    }
    Ok(out)
}

fn strict_cast(col: &ArrayRef, to: &DataType) -> Result<ArrayRef, DataError> {
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(col, to, &opts).map_err(|e| DataError::Engine(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::round_count;

    #[test]
    fn counts_are_rounded() {
        assert_eq!(round_count(0), 0);
        assert_eq!(round_count(7), 10);
        assert_eq!(round_count(1234), 1200);
        assert_eq!(round_count(98_765), 99_000);
    }
}

#[cfg(test)]
mod format_tests {
    use std::sync::Arc;

    use cleanroom::keys::encode_key;
    use datafusion::arrow::array::{Int32Array, Int64Array, StringArray, UInt32Array};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::ipc::writer::FileWriter;
    use datafusion::parquet::arrow::ArrowWriter;

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("acct", DataType::Utf8, false),
            Field::new("day", DataType::Int32, false),
            Field::new("amount", DataType::UInt32, false),
            Field::new("signed", DataType::Int64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(StringArray::from(vec!["x", "y", "x"])),
                Arc::new(Int32Array::from(vec![1, 1, 1])),
                Arc::new(UInt32Array::from(vec![5, 7, 9])),
                Arc::new(Int64Array::from(vec![Some(-1), None, Some(3)])),
            ],
        )
        .unwrap()
    }

    fn analysis(sql: &str) -> Analysis {
        Analysis::parse(&format!(
            "name = \"t\"\nrecipient = \"a\"\nkey = [\"string\", \"integer\"]\n[parties.a]\nsql = \"{sql}\"\n\
             [parties.b]\nsql = \"SELECT 1\"\n[output]\naggregates = [\"sum(a.amount)\"]\n"
        ))
        .unwrap()
    }

    async fn ctx(dir: &std::path::Path) -> SessionContext {
        let b = batch();
        let pq = dir.join("t.parquet");
        let mut w =
            ArrowWriter::try_new(std::fs::File::create(&pq).unwrap(), b.schema(), None).unwrap();
        w.write(&b).unwrap();
        w.close().unwrap();
        let ipc = dir.join("t.arrow");
        let mut w = FileWriter::try_new(std::fs::File::create(&ipc).unwrap(), &b.schema()).unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        load_tables(&BTreeMap::from([
            ("p".to_string(), pq),
            ("i".to_string(), ipc),
        ]))
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn parquet_and_arrow_ipc_tables_feed_the_protocol() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = ctx(tmp.path()).await;
        for table in ["p", "i"] {
            let a = analysis(&format!(
                "SELECT acct, day, sum(amount) AS amount FROM {table} GROUP BY acct, day ORDER BY acct"
            ));
            let rows = local_rows(&ctx, &a, "a").await.unwrap();
            let want = vec![
                Row::new(encode_key(&[KeyPart::Str("x"), KeyPart::Int(1)]), vec![14]),
                Row::new(encode_key(&[KeyPart::Str("y"), KeyPart::Int(1)]), vec![7]),
            ];
            assert_eq!(rows, want, "table {table}");
        }
    }

    #[tokio::test]
    async fn bad_outputs_name_the_column() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = ctx(tmp.path()).await;
        let run = |sql: &str| {
            let a = analysis(sql);
            let ctx = ctx.clone();
            async move { local_rows(&ctx, &a, "a").await.unwrap_err() }
        };
        let e = run("SELECT day, acct, amount FROM p").await;
        assert!(
            matches!(e, DataError::KeyType { ref column, .. } if column == "day"),
            "{e}"
        );
        let e = run("SELECT acct, day, signed AS amount FROM p").await;
        assert!(
            matches!(e, DataError::BadFeatureValue { ref column } if column == "amount"),
            "{e}"
        );
        let e = run("SELECT acct, day FROM p").await;
        assert!(
            matches!(e, DataError::MissingFeature { ref column } if column == "amount"),
            "{e}"
        );
        let e = run("SELECT CASE WHEN amount > 6 THEN acct END AS k, day, amount FROM p").await;
        assert!(
            matches!(e, DataError::NullKey { ref column } if column == "k"),
            "{e}"
        );
        let e = run("SELECT acct, day, CAST(amount AS DOUBLE) AS amount FROM p").await;
        assert!(
            matches!(e, DataError::FeatureType { ref column, .. } if column == "amount"),
            "{e}"
        );
        let e = run("SELECT acct, day, amount FROM nosuchtable").await;
        assert!(matches!(e, DataError::Engine(_)), "{e}");
    }
}
