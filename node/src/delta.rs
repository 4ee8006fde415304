//! Delta Lake tables through delta-rs's DataFusion table provider: a local
//! path or an object-store URL (`s3://`, `az://` / `abfss://`, `gs://`, with
//! credentials from the environment as `object_store` reads them), at its
//! latest version, a given version, or the version current at a timestamp.

use std::collections::HashMap;
use std::sync::{Arc, Once};

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use deltalake_core::logstore::{
    LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
    logstore_factories, object_store_factories,
};
use deltalake_core::protocol::SaveMode;
use deltalake_core::{
    DeltaResult, DeltaTable, DeltaTableBuilder, DeltaTableError, Path, ensure_table_uri,
};
use url::Url;

use crate::config::DeltaAt;
use crate::data::DataError;

/// Opens the Delta table at `location` as of `at`, registers it in `ctx`
/// as `name`, and returns the version it read.
pub async fn register(
    ctx: &SessionContext,
    name: &str,
    location: &str,
    at: &DeltaAt,
) -> Result<u64, DataError> {
    register_cloud_stores();
    let err = |e: DeltaTableError| DataError::Table {
        table: name.to_string(),
        message: e.to_string(),
    };
    // delta-rs creates a missing local directory when it makes the URL: a
    // mistyped path must fail instead.
    let local = !location.contains("://") || location.starts_with("file://");
    let path = std::path::Path::new(location.strip_prefix("file://").unwrap_or(location));
    if local && !path.join("_delta_log").is_dir() {
        return Err(DataError::Table {
            table: name.to_string(),
            message: format!("no Delta table at {location} (no _delta_log directory)"),
        });
    }
    let url = ensure_table_uri(location).map_err(err)?;
    let builder = DeltaTableBuilder::from_url(url).map_err(err)?;
    let builder = match at {
        DeltaAt::Latest => builder,
        DeltaAt::Version(v) => builder.with_version(*v),
        DeltaAt::Timestamp(ts) => builder.with_datestring(ts).map_err(err)?,
    };
    let table = builder.load().await.map_err(err)?;
    let version = table.version().ok_or_else(|| DataError::Table {
        table: name.to_string(),
        message: "the Delta table has no version".into(),
    })?;
    table.update_datafusion_session(&ctx.state()).map_err(err)?;
    let provider = table.table_provider().await?;
    ctx.register_table(name, provider)?;
    Ok(version)
}

/// Writes `batches` as a new version of the Delta table at `location`
/// (created if missing; appended to if `append`, else overwritten) and
/// returns that version. For the demo's data and tests: a bank's tables
/// are written by its own pipelines.
pub async fn write(
    location: &str,
    batches: Vec<RecordBatch>,
    append: bool,
) -> Result<u64, DataError> {
    register_cloud_stores();
    let err = |e: DeltaTableError| DataError::Table {
        table: location.to_string(),
        message: e.to_string(),
    };
    if !location.contains("://") {
        std::fs::create_dir_all(location).map_err(|e| DataError::Table {
            table: location.to_string(),
            message: e.to_string(),
        })?;
    }
    let url = ensure_table_uri(location).map_err(err)?;
    let table = DeltaTable::try_from_url(url)
        .await
        .map_err(err)?
        .write(batches)
        .with_save_mode(if append {
            SaveMode::Append
        } else {
            SaveMode::Overwrite
        })
        .await
        .map_err(err)?;
    table.version().ok_or_else(|| DataError::Table {
        table: location.to_string(),
        message: "the write produced no version".into(),
    })
}

/// Object stores and log stores for the cloud schemes, built by
/// `object_store` from the URL and the environment (`AWS_*`, `AZURE_*`,
/// `GOOGLE_*`). The node only reads cloud tables, so no commit lock is
/// configured: [`write`] (demo data, tests) is for local paths, or for a
/// store whose writes need no lock (not S3 with concurrent writers).
fn register_cloud_stores() {
    // Object stores reach the cloud over rustls.
    crate::tls::install_crypto_provider();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for scheme in ["s3", "s3a", "az", "abfs", "abfss", "azure", "gs"] {
            let Ok(url) = Url::parse(&format!("{scheme}://")) else {
                continue;
            };
            object_store_factories().insert(url.clone(), Arc::new(CloudStores));
            logstore_factories().insert(url, Arc::new(CloudStores));
        }
    });
}

struct CloudStores;

impl ObjectStoreFactory for CloudStores {
    fn parse_url_opts(
        &self,
        url: &Url,
        config: &StorageConfig,
    ) -> DeltaResult<(ObjectStoreRef, Path)> {
        let mut options: HashMap<String, String> = std::env::vars()
            .filter(|(k, _)| {
                ["AWS_", "AZURE_", "GOOGLE_"]
                    .iter()
                    .any(|p| k.starts_with(p))
            })
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        options.extend(config.raw.clone());
        let (store, path) = object_store::parse_url_opts(url, options)?;
        Ok((Arc::from(store), path))
    }
}

impl LogStoreFactory for CloudStores {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}
