//! Which engine runs the party's local query: DataFusion embedded in the
//! node (the default) or the bank's Spark cluster over Spark Connect
//! ([`crate::spark`]). Either way the engine's Arrow output goes through the
//! same key and feature checks ([`crate::data`]) and the node alone blinds
//! and masks it.

use std::collections::BTreeMap;

use cleanroom::Analysis;
use datafusion::prelude::SessionContext;

use crate::NodeError;
use crate::config::{EngineConfig, EngineKind, TableSource};
use crate::data::{self, DataError, RowBatches, TableInfo, TableVersions};
use crate::spark::{self, SparkSession};

/// The configured engine.
#[derive(Debug, Clone)]
pub enum Engine {
    /// DataFusion, embedded: tables are the configured files and Delta
    /// tables.
    DataFusion,
    /// Spark Connect: configured tables become temporary views of each
    /// run's Spark session; the SQL may also name the cluster's own tables.
    Spark(spark::Remote),
}

/// Name of the embedded engine in errors.
pub const DATAFUSION: &str = "DataFusion";

impl Engine {
    /// The engine of `[engine]` (a Spark connection string from the config,
    /// else from `SPARK_REMOTE`).
    pub fn from_config(c: &EngineConfig) -> Result<Engine, NodeError> {
        match c.kind {
            EngineKind::Datafusion => Ok(Engine::DataFusion),
            EngineKind::SparkConnect => {
                let url = match &c.remote {
                    Some(r) => r.clone(),
                    None => std::env::var(spark::REMOTE_ENV).map_err(|_| {
                        NodeError::Config(format!(
                            "engine kind \"spark-connect\" needs engine.remote or the \
                             environment variable {}",
                            spark::REMOTE_ENV
                        ))
                    })?,
                };
                spark::Remote::parse(&url)
                    .map(Engine::Spark)
                    .map_err(|e| NodeError::Config(format!("engine.remote: {e}")))
            }
        }
    }

    /// The engine's name (what other parties may be told).
    pub fn name(&self) -> &'static str {
        match self {
            Engine::DataFusion => DATAFUSION,
            Engine::Spark(_) => spark::ENGINE,
        }
    }

    /// The engine and where it is, for the operator's log.
    pub fn describe(&self) -> String {
        match self {
            Engine::DataFusion => format!("{DATAFUSION} (embedded)"),
            Engine::Spark(r) => format!(
                "{} at {}{}",
                spark::ENGINE,
                r.address(),
                if r.tls() { " (TLS)" } else { "" }
            ),
        }
    }

    /// Checks that the engine answers (Spark: one configuration read; the
    /// embedded engine always does).
    pub async fn check(&self) -> Result<(), DataError> {
        match self {
            Engine::DataFusion => Ok(()),
            Engine::Spark(r) => r.check().await,
        }
    }

    /// Opens the configured tables for one run (or one catalog call): a
    /// fresh DataFusion context, or a fresh Spark session with a temporary
    /// view per table. Delta tables are pinned to one version, returned for
    /// the audit record.
    pub async fn open(&self, tables: &BTreeMap<String, TableSource>) -> Result<Tables, DataError> {
        match self {
            Engine::DataFusion => {
                let (ctx, versions) = data::load_tables(tables).await?;
                Ok(Tables {
                    inner: Inner::DataFusion(ctx),
                    versions,
                })
            }
            Engine::Spark(r) => {
                let (session, versions) = r.open(tables).await?;
                Ok(Tables {
                    inner: Inner::Spark(session),
                    versions,
                })
            }
        }
    }
}

/// The tables of one run, opened in the engine.
pub struct Tables {
    inner: Inner,
    /// The version read of every Delta table.
    pub versions: TableVersions,
}

enum Inner {
    DataFusion(SessionContext),
    Spark(SparkSession),
}

impl Tables {
    /// Plans `party`'s query of the analysis without reading a row, and
    /// checks its output columns ([`data::check_schema`]): a query that
    /// does not parse, names an unknown table or column, or yields the
    /// wrong columns fails here, before the node debits its budget.
    /// DataFusion plans it; Spark analyses it by running it under `LIMIT 0`.
    pub async fn plan(self, analysis: &Analysis, party: &str) -> Result<Planned, DataError> {
        let sql = data::party_sql(analysis, party)?;
        let (inner, schema) = match self.inner {
            Inner::DataFusion(ctx) => {
                let df = data::datafusion_plan(&ctx, &sql).await?;
                let schema = df.schema().as_arrow().clone();
                (Query::DataFusion(df), schema)
            }
            Inner::Spark(session) => {
                let schema = session.schema_of(&sql).await?;
                (Query::Spark(session, sql), schema)
            }
        };
        data::check_schema(&schema, analysis, party)?;
        Ok(Planned {
            inner,
            analysis: analysis.clone(),
            party: party.to_string(),
        })
    }

    /// The metadata-only catalog of the given tables (see [`data::catalog`]).
    pub async fn catalog(&self, tables: &[String]) -> Result<Vec<TableInfo>, DataError> {
        match &self.inner {
            Inner::DataFusion(ctx) => data::catalog(ctx, tables).await,
            Inner::Spark(session) => session.catalog(tables).await,
        }
    }
}

/// A party's query, planned and checked ([`Tables::plan`]), not yet run.
pub struct Planned {
    inner: Query,
    analysis: Analysis,
    party: String,
}

enum Query {
    DataFusion(datafusion::dataframe::DataFrame),
    Spark(SparkSession, String),
}

impl Planned {
    /// Runs the query and streams its output as protocol row batches
    /// (see [`data::rows_of`]).
    pub async fn run(self) -> Result<RowBatches, DataError> {
        let batches = match self.inner {
            Query::DataFusion(df) => data::datafusion_batches(df).await?,
            Query::Spark(session, sql) => session.stream(&sql).await?,
        };
        Ok(data::rows_of(batches, &self.analysis, &self.party))
    }
}
