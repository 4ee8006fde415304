//! The bank's data, seen through DataFusion: table registration, the
//! metadata-only catalog, and the party's local query turned into protocol
//! rows (canonical keys and `u64` features).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cleanroom::Analysis;
use cleanroom::analysis::Grouping;
use cleanroom::keys::{KeyPart, KeyType, encode_part};
use std::pin::Pin;

use cleanroom::protocol::{Row, RowBatch};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, UInt64Array,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Int64Type, Schema, UInt64Type};
use datafusion::datasource::file_format::options::ArrowReadOptions;
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionContext};
use thiserror::Error;

use crate::config::TableSource;
use tokio_stream::{Stream, StreamExt};

/// Errors from the data layer. Messages name tables and columns, never
/// values — except [`DataError::Engine`], whose text comes from the query
/// engine and may quote the bank's data, and [`DataError::Table`],
/// [`DataError::UnknownFormat`] and [`DataError::Unreachable`], which name
/// paths and addresses inside the bank. The node never sends those texts to
/// another party (see [`DataError::for_peer`]); they stay with the node's
/// operator (its log and `cleanroom-node check`).
#[derive(Debug, Error)]
pub enum DataError {
    /// The query engine failed (bad SQL, unreadable file, a Spark error, …).
    #[error("local query engine {engine}: {message}")]
    Engine {
        /// The engine (`DataFusion`, `Spark Connect`).
        engine: &'static str,
        /// Its message.
        message: String,
    },
    /// The query engine could not be reached (Spark Connect).
    #[error("local query engine {engine} at {address} is unreachable: {message}")]
    Unreachable {
        /// The engine.
        engine: &'static str,
        /// Its `host:port`: named to the node's operator only (see
        /// [`DataError::for_peer`]).
        address: String,
        /// The cause.
        message: String,
    },
    /// A table could not be opened (a Delta table's log or files). The
    /// message may name paths or URLs inside the bank: the node sends only
    /// the table's name to other parties (see [`DataError::for_peer`]).
    #[error("table {table:?}: {message}")]
    Table {
        /// Table name.
        table: String,
        /// The cause.
        message: String,
    },
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
            DataError::Engine { engine, .. } => format!(
                "the local query failed in the query engine ({engine}; the node's operator can \
                 see why with `cleanroom-node check`)"
            ),
            DataError::Unreachable { engine, .. } => format!(
                "the node's query engine ({engine}) is unreachable (the node's operator can see \
                 where with `cleanroom-node check`)"
            ),
            // Not even the table's name: a coordinator's catalog policy may
            // hide it.
            DataError::Table { .. } | DataError::UnknownFormat { .. } => {
                "a configured table could not be opened (the node's operator can see which \
                 and why with `cleanroom-node check`)"
                    .to_string()
            }
            other => other.to_string(),
        }
    }
}

impl From<datafusion::error::DataFusionError> for DataError {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        DataError::datafusion(e)
    }
}

impl DataError {
    /// An error of the embedded engine.
    pub fn datafusion(e: impl std::fmt::Display) -> Self {
        DataError::Engine {
            engine: crate::engine::DATAFUSION,
            message: e.to_string(),
        }
    }
}

/// The version of every Delta table a context reads (table → version):
/// recorded with each run, so its result can be reproduced.
pub type TableVersions = BTreeMap<String, u64>;

/// Registers every configured table in a fresh DataFusion context; a Delta
/// table is read at its configured version or timestamp, else at its latest
/// version now. Returns the context and the Delta versions it reads.
pub async fn load_tables(
    tables: &BTreeMap<String, TableSource>,
) -> Result<(SessionContext, TableVersions), DataError> {
    let ctx = SessionContext::new();
    let mut versions = TableVersions::new();
    for (name, source) in tables {
        match source {
            TableSource::File(path) => register_file(&ctx, name, path).await?,
            TableSource::Delta { location, at } => {
                let v = crate::delta::register(&ctx, name, location, at).await?;
                versions.insert(name.clone(), v);
            }
        }
    }
    Ok((ctx, versions))
}

/// Registers a CSV, Parquet or Arrow IPC file as table `name`.
async fn register_file(ctx: &SessionContext, name: &str, path: &Path) -> Result<(), DataError> {
    {
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
                    table: name.to_string(),
                    path: path.to_path_buf(),
                });
            }
        }
    }
    Ok(())
}

/// A format a table can be written in (demo data, tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// CSV with a header row.
    Csv,
    /// Apache Parquet.
    Parquet,
    /// Arrow IPC file (`.arrow`).
    Arrow,
    /// A Delta Lake table (a directory).
    Delta,
}

impl std::str::FromStr for TableFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "csv" => Ok(TableFormat::Csv),
            "parquet" => Ok(TableFormat::Parquet),
            "arrow" => Ok(TableFormat::Arrow),
            "delta" => Ok(TableFormat::Delta),
            _ => Err(format!(
                "unknown format {s:?} (csv, parquet, arrow or delta)"
            )),
        }
    }
}

/// Rewrites the CSV file `csv` in `format` beside it (`NAME.parquet`,
/// `NAME.arrow`, or a Delta table in directory `NAME`), removes the CSV,
/// and returns the new table's path. `Csv` leaves the file as it is.
pub async fn convert_csv(csv: &Path, format: TableFormat) -> Result<PathBuf, DataError> {
    let out = match format {
        TableFormat::Csv => return Ok(csv.to_path_buf()),
        TableFormat::Parquet => csv.with_extension("parquet"),
        TableFormat::Arrow => csv.with_extension("arrow"),
        TableFormat::Delta => csv.with_extension(""),
    };
    let ctx = SessionContext::new();
    let batches = ctx
        .read_csv(csv.to_string_lossy().as_ref(), CsvReadOptions::new())
        .await?
        .collect()
        .await?;
    let io = |e: std::io::Error| DataError::Table {
        table: out.display().to_string(),
        message: e.to_string(),
    };
    let engine = |e: datafusion::arrow::error::ArrowError| DataError::datafusion(e);
    let schema = || {
        batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| DataError::datafusion(format!("{} is empty", csv.display())))
    };
    match format {
        TableFormat::Arrow => {
            let file = std::fs::File::create(&out).map_err(io)?;
            let mut w =
                datafusion::arrow::ipc::writer::FileWriter::try_new(file, schema()?.as_ref())
                    .map_err(engine)?;
            for b in &batches {
                w.write(b).map_err(engine)?;
            }
            w.finish().map_err(engine)?;
        }
        TableFormat::Parquet => {
            let schema = schema()?;
            let file = std::fs::File::create(&out).map_err(io)?;
            let mut w = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None)
                .map_err(DataError::datafusion)?;
            for b in &batches {
                w.write(b).map_err(DataError::datafusion)?;
            }
            w.close().map_err(DataError::datafusion)?;
        }
        TableFormat::Delta => {
            crate::delta::write(&out.display().to_string(), batches, false).await?;
        }
        TableFormat::Csv => {}
    }
    std::fs::remove_file(csv).map_err(io)?;
    Ok(out)
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

/// A stream of an engine's output, as Arrow record batches.
pub type RecordBatches = Pin<Box<dyn Stream<Item = Result<RecordBatch, DataError>> + Send>>;

/// `party`'s SQL in the analysis.
pub fn party_sql(analysis: &Analysis, party: &str) -> Result<String, DataError> {
    analysis
        .parties
        .iter()
        .find(|p| p.name == party)
        .map(|p| p.sql.clone())
        .ok_or_else(|| DataError::datafusion(format!("party {party} not in analysis")))
}

/// Plans a query on DataFusion without running it. Only a query plans:
/// DDL (`CREATE`, `DROP`), DML (`INSERT`, `COPY … TO`) and statements
/// (`SET`, transactions) are refused, so the party's SQL can never change
/// the node's tables or files.
pub async fn datafusion_plan(
    ctx: &SessionContext,
    sql: &str,
) -> Result<datafusion::dataframe::DataFrame, DataError> {
    let options = datafusion::execution::context::SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    Ok(ctx.sql_with_options(sql, options).await?)
}

/// Runs a planned query and streams its record batches.
pub async fn datafusion_batches(
    df: datafusion::dataframe::DataFrame,
) -> Result<RecordBatches, DataError> {
    let stream = df.execute_stream().await?;
    Ok(Box::pin(stream.map(|b| b.map_err(DataError::from))))
}

/// Turns an engine's output for `party`'s query into protocol row batches,
/// one per record batch as the engine produces them: the first `key.len()`
/// columns are the key parts, the features named by the analysis are
/// looked up by column name (and the group column, for the grouping
/// party). Every engine's output goes through these same checks.
pub fn rows_of(batches: RecordBatches, analysis: &Analysis, party: &str) -> RowBatches {
    let key = analysis.key.clone();
    let features = analysis.features(party);
    let grouping = analysis.grouping.clone().filter(|g| g.party == party);
    Box::pin(batches.map(move |b| batch_rows(&b?, &key, &features, grouping.as_ref())))
}

/// The whole output of `party`'s query as rows (for checks and tests; the
/// node streams it with [`crate::engine::Planned::run`]).
pub async fn local_rows(
    tables: crate::engine::Tables,
    analysis: &Analysis,
    party: &str,
) -> Result<Vec<Row>, DataError> {
    let mut batches = tables.plan(analysis, party).await?.run().await?;
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
        t if t.is_integer() => strict_cast(col, &DataType::Int64).map_err(|_| unknown())?,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            strict_cast(col, &DataType::Utf8).map_err(|_| unknown())?
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

/// Checks the columns of `party`'s query output before any row is read
/// (the node runs it on the planned query's schema, before the budget is
/// debited): enough columns for the key, key columns of the key's types,
/// every feature present (after the key columns) and of an integer type,
/// and the group column present for the grouping party. The same checks
/// run again on every batch ([`rows_of`]).
pub fn check_schema(schema: &Schema, analysis: &Analysis, party: &str) -> Result<(), DataError> {
    feature_columns(schema, &analysis.key, &analysis.features(party))?;
    if let Some(g) = analysis.grouping.as_ref().filter(|g| g.party == party)
        && schema.index_of(&g.column).is_err()
    {
        return Err(DataError::MissingGroupColumn {
            column: g.column.clone(),
        });
    }
    Ok(())
}

/// The schema checks of [`check_schema`] for the key and features; returns
/// the index of every feature's column.
fn feature_columns(
    schema: &Schema,
    key: &[KeyType],
    features: &[String],
) -> Result<Vec<usize>, DataError> {
    let fields = schema.fields();
    if fields.len() < key.len() {
        return Err(DataError::TooFewColumns {
            got: fields.len(),
            key_parts: key.len(),
        });
    }
    for (f, t) in fields.iter().zip(key) {
        let ok = match t {
            KeyType::String => matches!(
                f.data_type(),
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            ),
            KeyType::Integer => f.data_type().is_integer(),
        };
        if !ok {
            return Err(DataError::KeyType {
                column: f.name().clone(),
                expected: *t,
                found: f.data_type().to_string(),
            });
        }
    }
    features
        .iter()
        .map(|name| {
            let idx = (key.len()..fields.len())
                .find(|&i| fields[i].name() == name)
                .ok_or_else(|| DataError::MissingFeature {
                    column: name.clone(),
                })?;
            if !fields[idx].data_type().is_integer() {
                return Err(DataError::FeatureType {
                    column: name.clone(),
                    found: fields[idx].data_type().to_string(),
                });
            }
            Ok(idx)
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
    let feature_idx = feature_columns(&schema, key, features)?;
    let mut key_cols = Vec::new();
    for (i, t) in key.iter().enumerate() {
        let name = schema.field(i).name().clone();
        let col = b.column(i);
        if col.null_count() > 0 {
            return Err(DataError::NullKey { column: name });
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
    for (f, &idx) in features.iter().zip(&feature_idx) {
        let col = b.column(idx);
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

/// A cast that fails instead of producing nulls (callers name the column).
fn strict_cast(
    col: &ArrayRef,
    to: &DataType,
) -> Result<ArrayRef, datafusion::arrow::error::ArrowError> {
    let opts = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(col, to, &opts)
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

    async fn ctx(dir: &std::path::Path) -> BTreeMap<String, TableSource> {
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
        BTreeMap::from([("p".to_string(), pq.into()), ("i".to_string(), ipc.into())])
    }

    async fn rows(
        tables: &BTreeMap<String, TableSource>,
        a: &Analysis,
    ) -> Result<Vec<Row>, DataError> {
        let t = crate::engine::Engine::DataFusion.open(tables).await?;
        local_rows(t, a, "a").await
    }

    #[tokio::test]
    async fn parquet_and_arrow_ipc_tables_feed_the_protocol() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = ctx(tmp.path()).await;
        for table in ["p", "i"] {
            let a = analysis(&format!(
                "SELECT acct, day, sum(amount) AS amount FROM {table} GROUP BY acct, day ORDER BY acct"
            ));
            let rows = rows(&ctx, &a).await.unwrap();
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
            async move { rows(&ctx, &a).await.unwrap_err() }
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
        // Only a query runs: no DDL, DML or statement.
        for sql in [
            "CREATE TABLE x AS SELECT 1",
            "COPY p TO '/tmp/cleanroom-copy.csv'",
            "INSERT INTO p VALUES ('z', 1, 1, 1)",
            "SET datafusion.execution.batch_size = 1",
        ] {
            let e = run(sql).await;
            assert!(
                matches!(
                    e,
                    DataError::Engine {
                        engine: "DataFusion",
                        ..
                    }
                ),
                "{sql}: {e}"
            );
        }
        assert!(!std::path::Path::new("/tmp/cleanroom-copy.csv").exists());
        let e = run("SELECT acct, day, amount FROM nosuchtable").await;
        assert!(
            matches!(
                e,
                DataError::Engine {
                    engine: "DataFusion",
                    ..
                }
            ),
            "{e}"
        );
    }
}
