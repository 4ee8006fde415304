//! The local query on the bank's own Spark cluster, over Apache Spark's
//! Spark Connect protocol (Databricks Connect is built on it).
//!
//! The node speaks the protocol with Apache Spark's official Rust crates
//! (`apache-spark-connect-core` for the connection string, channel and
//! token; `apache-spark-connect-proto` for the messages) and decodes the
//! Arrow IPC batches Spark streams back with the node's own arrow (the one
//! DataFusion uses), so there is one arrow in the build and no conversion.
//!
//! What the cluster sees: the party's SQL, and for tables the node config
//! maps to files, `CREATE TEMPORARY VIEW` statements naming their paths.
//! It sees only the bank's own plaintext, inside the bank; the node still
//! does all blinding and masking and holds every secret.

use std::io::Cursor;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::reader::StreamReader;
use spark_connect_core::{ChannelBuilder, RetryPolicy, SparkConnectClient, SparkError};
use spark_connect_proto::execute_plan_response::ResponseType;
use spark_connect_proto::{ExecutePlanRequest, Plan, Relation, Sql, UserContext, plan, relation};

use crate::config::{DeltaAt, TableSource};
use crate::data::{DataError, RecordBatches, TableInfo, TableVersions, round_count};

/// The engine's name in errors and logs.
pub const ENGINE: &str = "Spark Connect";

/// The environment variable Spark's own clients read the connection string
/// from; used when the config gives no `remote`.
pub const REMOTE_ENV: &str = "SPARK_REMOTE";

/// A Spark Connect server: its parsed connection string
/// (`sc://host:port/;token=…;use_ssl=true;user_id=…`, as Spark defines it).
#[derive(Clone)]
pub struct Remote {
    builder: ChannelBuilder,
}

impl std::fmt::Debug for Remote {
    /// The address only: the connection string may hold a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.address())
    }
}

impl Remote {
    /// Parses a Spark Connect connection string. The error never repeats the
    /// string (it may hold a token).
    pub fn parse(url: &str) -> Result<Remote, String> {
        let builder = ChannelBuilder::parse(url).map_err(|e| {
            // Spark's message quotes parameters, which may include the token.
            let class = e.get_error_class().unwrap_or_else(|| "invalid".into());
            format!(
                "not a Spark Connect connection string ({class}); the form is \
                 sc://host:port/;use_ssl=true;token=…"
            )
        })?;
        // Every run and catalog call opens a Spark session of its own (its
        // temporary views, its pinned Delta versions): a fixed session id
        // would make them share one, and one ending would end the others.
        if !matches!(builder.session_id(), Ok(None)) {
            return Err("a Spark Connect connection string for the node must not set                         session_id: every run opens a Spark session of its own"
                .into());
        }
        Ok(Remote { builder })
    }

    /// `host:port`, for logs and the operator's errors (never the token).
    pub fn address(&self) -> String {
        self.builder.endpoint()
    }

    /// Whether TLS is on (`use_ssl=true`).
    pub fn tls(&self) -> bool {
        self.builder.use_ssl()
    }

    /// A client on a fresh Spark session (temporary views live per session,
    /// so every run sees only its own). The connection is made by the first
    /// call; calls are not retried, so an unreachable server fails at once.
    async fn client(&self) -> Result<SparkConnectClient, DataError> {
        crate::tls::install_crypto_provider();
        let mut c = SparkConnectClient::connect(&self.builder)
            .await
            .map_err(|e| self.error(e))?;
        c.set_retry_policy(RetryPolicy::no_retries());
        Ok(c)
    }

    /// Checks that the server answers (one configuration read, no query):
    /// the node runs it at startup and before each setup, so that an
    /// unreachable cluster fails a run before any budget is spent.
    pub async fn check(&self) -> Result<(), DataError> {
        let c = std::sync::Arc::new(self.client().await?);
        let answered = c
            .get_configs(&["spark.sql.ansi.enabled"])
            .await
            .map(|_| ())
            .map_err(|e| self.error(e));
        if answered.is_ok() {
            release(c);
        }
        answered
    }

    /// Opens a Spark session for one run: every configured table becomes a
    /// temporary view of that session (tables not in the config are read
    /// from the cluster's own catalog by the party's SQL).
    pub async fn open(
        &self,
        tables: &std::collections::BTreeMap<String, TableSource>,
    ) -> Result<(SparkSession, TableVersions), DataError> {
        let session = SparkSession {
            client: std::sync::Arc::new(self.client().await?),
            remote: self.clone(),
        };
        let mut versions = TableVersions::new();
        for (name, source) in tables {
            let view = quote_ident(name);
            let body = match source {
                TableSource::File(path) => {
                    let p = quote_str(&path.display().to_string());
                    let ext = path
                        .extension()
                        .and_then(|e| e.to_str())
                        .unwrap_or("")
                        .to_ascii_lowercase();
                    match ext.as_str() {
                        "csv" => format!(
                            "USING csv OPTIONS (path {p}, header 'true', inferSchema 'true')"
                        ),
                        "parquet" => format!("USING parquet OPTIONS (path {p})"),
                        _ => {
                            return Err(DataError::Table {
                                table: name.clone(),
                                message: format!(
                                    "{ENGINE} reads .csv and .parquet files and Delta tables \
                                     ({} is neither); or name a table of the cluster's \
                                     catalog in the SQL",
                                    path.display()
                                ),
                            });
                        }
                    }
                }
                TableSource::Delta { location, at } => {
                    let t = format!("delta.{}", quote_ident(location));
                    let version = match at {
                        DeltaAt::Version(v) => *v,
                        // Pin the version read now, so the run reads one
                        // snapshot and the audit record can name it.
                        DeltaAt::Latest => session.delta_version(name, &t, None).await?,
                        DeltaAt::Timestamp(ts) => session.delta_version(name, &t, Some(ts)).await?,
                    };
                    versions.insert(name.clone(), version);
                    format!("AS SELECT * FROM {t} VERSION AS OF {version}")
                }
            };
            session
                .run(&format!("CREATE OR REPLACE TEMPORARY VIEW {view} {body}"))
                .await
                .map_err(|e| match e {
                    DataError::Engine { message, .. } => DataError::Table {
                        table: name.clone(),
                        message: format!("{ENGINE}: {message}"),
                    },
                    e => e,
                })?;
        }
        Ok((session, versions))
    }

    /// A Spark error as the node's error: an unreachable server names its
    /// address; anything else is the engine's message (local only: see
    /// [`DataError::for_peer`]).
    fn error(&self, e: SparkError) -> DataError {
        let unavailable = e.grpc_code() == Some(tonic::Code::Unavailable as i32)
            || e.grpc_code() == Some(tonic::Code::DeadlineExceeded as i32)
            || e.get_error_class().is_none() && e.grpc_code().is_none();
        if unavailable {
            DataError::Unreachable {
                engine: ENGINE,
                address: self.address(),
                message: e.message(),
            }
        } else {
            DataError::Engine {
                engine: ENGINE,
                message: e.message(),
            }
        }
    }
}

/// One Spark session of one run, its temporary views created.
pub struct SparkSession {
    client: std::sync::Arc<SparkConnectClient>,
    remote: Remote,
}

impl Drop for SparkSession {
    /// Releases the server's session (its views and cached state) in the
    /// background; a server that is gone drops it by its own timeout.
    fn drop(&mut self) {
        release(self.client.clone());
    }
}

/// Releases a client's server-side session, in the background.
fn release(client: std::sync::Arc<SparkConnectClient>) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = client.release_session().await;
        });
    }
}

impl SparkSession {
    /// The version of a Delta table now, or the newest at or before
    /// timestamp `at`, from `DESCRIBE HISTORY` (needs Delta Lake on the
    /// cluster, as Databricks has; not tested here: the test's Spark has no
    /// Delta).
    async fn delta_version(
        &self,
        table: &str,
        delta: &str,
        at: Option<&str>,
    ) -> Result<u64, DataError> {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};
        let fail = |message: String| DataError::Table {
            table: table.to_string(),
            message: format!("{ENGINE}: {message}"),
        };
        let cutoff = at
            .map(crate::config::timestamp_micros)
            .transpose()
            .map_err(fail)?;
        let limit = if cutoff.is_none() { " LIMIT 1" } else { "" };
        let batches = self
            .collect(&format!("DESCRIBE HISTORY {delta}{limit}"))
            .await?;
        let mut best: Option<i64> = None;
        for b in &batches {
            let version = b
                .column_by_name("version")
                .and_then(|c| c.as_primitive_opt::<Int64Type>());
            let time = b
                .column_by_name("timestamp")
                .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>());
            let (Some(version), Some(time)) = (version, time) else {
                return Err(fail(format!(
                    "DESCRIBE HISTORY {delta} has no version and timestamp"
                )));
            };
            for r in 0..b.num_rows() {
                if cutoff.is_none_or(|c| time.value(r) <= c) {
                    best = best.max(Some(version.value(r)));
                }
            }
        }
        best.and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| fail(format!("no Delta version of {delta} at that time")))
    }

    /// Names, columns, Arrow types and rounded row counts of the given
    /// tables (views of this session or tables of the cluster's catalog).
    /// Never rows: the schema comes from an empty result, the count from
    /// `count(*)`.
    pub async fn catalog(&self, tables: &[String]) -> Result<Vec<TableInfo>, DataError> {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::Int64Type;
        let mut out = Vec::new();
        for name in tables {
            let t = quote_ident(name);
            let schema = self
                .schema(&format!("SELECT * FROM {t}"), &format!("table {name:?}"))
                .await?;
            let counted = self
                .collect(&format!("SELECT CAST(count(*) AS BIGINT) FROM {t}"))
                .await?;
            let rows = counted
                .iter()
                .find(|b| b.num_rows() == 1)
                .and_then(|b| {
                    b.columns()
                        .first()?
                        .as_primitive_opt::<Int64Type>()
                        .map(|c| c.value(0))
                })
                .ok_or_else(|| DataError::Engine {
                    engine: ENGINE,
                    message: format!("no row count for table {name:?}"),
                })?;
            out.push(TableInfo {
                name: name.clone(),
                columns: schema
                    .fields()
                    .iter()
                    .map(|f| (f.name().clone(), f.data_type().to_string()))
                    .collect(),
                approx_rows: round_count(rows.max(0) as u64),
            });
        }
        Ok(out)
    }

    /// The output schema of `query`, from an empty result (`LIMIT 0`):
    /// Spark analyses the whole query, resolving every table and column,
    /// and reads no row. `what` names the query in errors.
    async fn schema(&self, query: &str, what: &str) -> Result<Schema, DataError> {
        let empty = self.collect(&format!("{query} LIMIT 0")).await?;
        empty
            .first()
            .map(|b| b.schema().as_ref().clone())
            .ok_or_else(|| DataError::Engine {
                engine: ENGINE,
                message: format!("no schema for {what}"),
            })
    }

    /// The output schema of the party's query (run as in
    /// [`SparkSession::stream`], under `LIMIT 0`).
    pub async fn schema_of(&self, sql: &str) -> Result<Schema, DataError> {
        self.schema(&query_only(sql), "the party's query").await
    }

    /// Runs a statement and drops its output.
    async fn run(&self, sql: &str) -> Result<(), DataError> {
        let mut stream = self.execute(sql).await?;
        while self.next(&mut stream).await?.is_some() {}
        Ok(())
    }

    /// Runs a query and collects its batches (small results only).
    pub async fn collect(&self, sql: &str) -> Result<Vec<RecordBatch>, DataError> {
        let mut stream = self.execute(sql).await?;
        let mut out = Vec::new();
        while let Some(mut b) = self.next(&mut stream).await? {
            out.append(&mut b);
        }
        Ok(out)
    }

    /// Runs the party's query and streams its record batches as Spark
    /// sends them. The SQL is run as a subquery, so only a query runs: a
    /// command (`INSERT`, `DROP`, `ADD JAR`, …), which Spark would execute
    /// at once with the connection's rights, is a syntax error instead.
    pub async fn stream(self, sql: &str) -> Result<RecordBatches, DataError> {
        let sql = query_only(sql);
        let stream = self.execute(&sql).await?;
        let out = async_stream(self, stream);
        Ok(Box::pin(out))
    }

    async fn execute(&self, sql: &str) -> Result<Batches, DataError> {
        let request = ExecutePlanRequest {
            session_id: self.client.session_id().to_string(),
            user_context: Some(UserContext {
                user_id: self.client.user_id().unwrap_or_default().to_string(),
                ..Default::default()
            }),
            plan: Some(Plan {
                op_type: Some(plan::OpType::Root(Relation {
                    common: None,
                    rel_type: Some(relation::RelType::Sql(Sql {
                        query: sql.to_string(),
                        ..Default::default()
                    })),
                })),
            }),
            client_type: Some(format!("cleanroom-node/{}", env!("CARGO_PKG_VERSION"))),
            ..Default::default()
        };
        let stream = self
            .client
            .execute_plan(request)
            .await
            .map_err(|e| self.remote.error(e))?;
        Ok(Batches {
            stream,
            pending: Vec::new(),
        })
    }

    /// The next response's record batches (`Some(vec![])` for responses
    /// that carry none), or `None` at the end of the stream.
    async fn next(&self, b: &mut Batches) -> Result<Option<Vec<RecordBatch>>, DataError> {
        let engine = |message: String| DataError::Engine {
            engine: ENGINE,
            message,
        };
        let Some(resp) = b
            .stream
            .message()
            .await
            .map_err(|s| self.remote.error(SparkError::from_grpc_status(s)))?
        else {
            if !b.pending.is_empty() {
                return Err(engine(
                    "the result ended inside a chunked Arrow batch".into(),
                ));
            }
            return Ok(None);
        };
        let Some(ResponseType::ArrowBatch(batch)) = resp.response_type else {
            return Ok(Some(Vec::new()));
        };
        // A batch may come in chunks (when the server chunks results):
        // gather them, then decode the whole IPC stream.
        b.pending.extend_from_slice(&batch.data);
        let (index, chunks) = (
            batch.chunk_index.unwrap_or(0),
            batch.num_chunks_in_batch.unwrap_or(1),
        );
        if index.saturating_add(1) < chunks {
            return Ok(Some(Vec::new()));
        }
        let data = std::mem::take(&mut b.pending);
        let reader = StreamReader::try_new(Cursor::new(data), None)
            .map_err(|e| engine(format!("undecodable Arrow batch: {e}")))?;
        let batches = reader
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| engine(format!("undecodable Arrow batch: {e}")))?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        if rows as i64 != batch.row_count {
            return Err(engine(format!(
                "an Arrow batch announced {} rows and held {rows}",
                batch.row_count
            )));
        }
        Ok(Some(batches))
    }
}

/// An execute-plan response stream and a partly received chunked batch.
struct Batches {
    stream: tonic::Streaming<spark_connect_proto::ExecutePlanResponse>,
    pending: Vec<u8>,
}

/// The record batches of a query, one at a time, as they arrive.
fn async_stream(
    session: SparkSession,
    stream: Batches,
) -> impl tokio_stream::Stream<Item = Result<RecordBatch, DataError>> + Send {
    futures::stream::unfold(
        (session, stream, std::collections::VecDeque::new(), false),
        |(session, mut stream, mut ready, done)| async move {
            loop {
                if let Some(b) = ready.pop_front() {
                    return Some((Ok(b), (session, stream, ready, done)));
                }
                if done {
                    return None;
                }
                match session.next(&mut stream).await {
                    Ok(Some(bs)) => ready.extend(bs),
                    Ok(None) => return None,
                    Err(e) => return Some((Err(e), (session, stream, ready, true))),
                }
            }
        },
    )
}

/// `sql` as a subquery (trailing semicolons and blanks dropped).
fn query_only(sql: &str) -> String {
    let sql = sql.trim_end_matches(|c: char| c == ';' || c.is_whitespace());
    format!("SELECT * FROM (\n{sql}\n) AS cleanroom_party_query")
}

/// A Spark SQL identifier in backquotes.
fn quote_ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// A Spark SQL string literal.
fn quote_str(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a`b"), "`a``b`");
        assert_eq!(quote_str("it's a\\b"), "'it\\'s a\\\\b'");
    }

    #[test]
    fn parse_never_echoes_the_token() {
        let e = Remote::parse("sc://h:1/;token=SECRET;bad").unwrap_err();
        assert!(!e.contains("SECRET"), "{e}");
        let r = Remote::parse("sc://Spark.Bank:15002/;use_ssl=true;token=SECRET").unwrap();
        assert_eq!(r.address(), "spark.bank:15002");
        assert!(r.tls());
        assert!(!format!("{r:?}").contains("SECRET"));
        assert!(Remote::parse("http://h:1").is_err());
        let e =
            Remote::parse("sc://h:1/;token=SECRET;session_id=8a9e6b7c-1d2e-4f3a-9b8c-7d6e5f4a3b2c")
                .unwrap_err();
        assert!(e.contains("session_id") && !e.contains("SECRET"), "{e}");
    }
}
