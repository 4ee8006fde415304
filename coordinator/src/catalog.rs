//! `cleanroom-coordinator catalog`: what each node lets this coordinator see
//! of its tables (names, columns, types, row counts rounded to two
//! significant digits). Metadata only: nodes never send a value.

use std::fmt::Write as _;

use cleanroom_node::tls::TlsMaterial;
use cleanroom_proto::v1::{CatalogRequest, Table};
use futures::future::try_join_all;

use crate::run::{CoordinatorError, NodeTarget, connect};

/// One node's visible tables.
#[derive(Debug, Clone)]
pub struct NodeCatalog {
    /// Party name.
    pub node: String,
    /// Its tables, as its policy shows them to this coordinator.
    pub tables: Vec<Table>,
}

/// Asks every target for its catalog.
pub async fn fetch_catalogs(
    targets: &[NodeTarget],
    tls: &TlsMaterial,
) -> Result<Vec<NodeCatalog>, CoordinatorError> {
    try_join_all(targets.iter().map(|t| async move {
        let p = connect(t, tls, crate::Deadlines::default().setup).await?;
        let tables = p
            .client
            .clone()
            .catalog(CatalogRequest {})
            .await
            .map_err(p.fail("catalog"))?
            .into_inner()
            .tables;
        Ok(NodeCatalog {
            node: t.name.clone(),
            tables,
        })
    }))
    .await
}

/// Formats catalogs as indented text.
pub fn format_catalogs(catalogs: &[NodeCatalog]) -> String {
    let mut s = String::new();
    for c in catalogs {
        let _ = writeln!(s, "{}", c.node);
        if c.tables.is_empty() {
            let _ = writeln!(s, "  (no tables visible to this coordinator)");
        }
        for t in &c.tables {
            let _ = writeln!(s, "  {}  (about {} rows)", t.name, t.approx_rows);
            let w = t.columns.iter().map(|c| c.name.len()).max().unwrap_or(0);
            for col in &t.columns {
                let _ = writeln!(s, "    {:<w$}  {}", col.name, col.data_type);
            }
        }
    }
    s
}
