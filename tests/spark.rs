//! The local query on a real Spark: a Spark Connect server from the
//! `pyspark` package on Java 17 (see `common/spark.rs`; `.ci/run` installs
//! both), on 127.0.0.1 with an ephemeral port. One server serves every
//! check here, run in sequence, because Spark takes 15–30 s to start.

mod common;

use std::collections::BTreeMap;

use cleanroom::Analysis;
use cleanroom_node::config::{EngineConfig, EngineKind, TableSource};
use cleanroom_node::data::{DataError, TableFormat, convert_csv, local_rows, round_count};
use cleanroom_node::engine::Engine;
use cleanroom_node::spark::Remote;
use common::spark::SparkServer;
use common::*;

fn spark_engine(remote: &str) -> EngineConfig {
    EngineConfig {
        kind: EngineKind::SparkConnect,
        remote: Some(remote.to_string()),
    }
}

/// Runs `text` over `banks`, bank-a's query on `engine`; the released
/// values at the recipient (bank-b) or the coordinator's error.
async fn run_with(
    banks: &[Bank],
    text: &str,
    engine: Option<EngineConfig>,
) -> (Result<BTreeMap<String, i64>, String>, Cluster) {
    let cluster = Cluster::start_with(
        banks,
        &[text],
        Setup {
            tweak: Some(Box::new(move |i, c| {
                if let (0, Some(e)) = (i, &engine) {
                    c.engine = e.clone();
                }
            })),
            ..Setup::default()
        },
    )
    .await;
    let got = match cluster.run(text, "coordinator").await {
        Ok(report) => Ok(released(&cluster.store(1).result(&report.sid).unwrap())),
        Err(e) => Err(e.to_string()),
    };
    (got, cluster)
}

/// Budget debits in bank `i`'s audit chain.
fn debits(c: &Cluster, i: usize) -> usize {
    c.store(i)
        .audit_chain()
        .unwrap()
        .iter()
        .filter(|r| r.json.contains("\"debit\""))
        .count()
}

/// An analysis whose bank-a query is `sql_a` (bank-b's is the usual one).
fn analysis_with(sql_a: &str) -> String {
    analysis_text(2, 1, 1).replacen(
        "SELECT acct, sum(amount) AS amount, count(*) AS n FROM accounts GROUP BY acct",
        sql_a,
        1,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_query_runs_on_spark_connect() {
    let _serial = serial().await;
    let spark = tokio::task::spawn_blocking(SparkServer::start)
        .await
        .unwrap();
    let remote = spark.remote();
    let banks = banks(2, 41);
    let text = analysis_text(2, 1, 1);
    let want = plaintext(&banks);

    // 1. The mule analysis with bank-a's query on Spark and bank-b's on the
    //    embedded engine equals the all-embedded run and the plaintext join.
    let (embedded, c) = run_with(&banks, &text, None).await;
    c.stop().await;
    let mark = log_mark();
    let (on_spark, c) = run_with(&banks, &text, Some(spark_engine(&remote))).await;
    let local_step = c
        .store(0)
        .audit_chain()
        .unwrap()
        .iter()
        .map(|r| r.json.clone())
        .find(|j| j.contains("\"local_step\""))
        .unwrap();
    c.stop().await;
    assert_eq!(embedded.unwrap(), want);
    assert_eq!(on_spark.unwrap(), want, "bank-a's query on Spark");
    assert!(
        log_since(mark).contains(&format!("Spark Connect at 127.0.0.1:{}", spark.port)),
        "the node logs its engine"
    );
    assert!(local_step.contains("local_step"), "{local_step}");

    // 2. A Spark SQL error comes back naming the engine, and nothing is
    //    released.
    let bad = analysis_with("SELEC acct FROM accounts");
    let (got, c) = run_with(&banks, &bad, Some(spark_engine(&remote))).await;
    let err = got.unwrap_err();
    assert!(
        err.contains("bank-a") && err.contains("query engine (Spark Connect"),
        "{err}"
    );
    assert!(
        !err.contains("SELEC"),
        "the engine's text stays at the node: {err}"
    );
    assert!(c.results(1).is_empty(), "nothing released");
    assert_eq!(
        debits(&c, 0),
        0,
        "a query Spark cannot parse costs no budget"
    );
    c.stop().await;
    // So does one naming a column the table lacks (Spark analyses the query
    // before the node debits).
    let unknown = analysis_with("SELECT acct, no_such_column AS amount, 1 AS n FROM accounts");
    let (got, c) = run_with(&banks, &unknown, Some(spark_engine(&remote))).await;
    assert!(got.unwrap_err().contains("Spark Connect"));
    assert!(c.results(1).is_empty(), "nothing released");
    assert_eq!(debits(&c, 0), 0, "an unknown column costs no budget");
    c.stop().await;

    // 3. Spark's output goes through the same checks as DataFusion's, and
    //    the errors name the column; a Parquet file works as a view too; the
    //    catalog shows columns and a rounded count, never rows.
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("accounts.csv");
    let mut s = String::from("acct,amount\n");
    for (a, v) in &banks[0].rows {
        s += &format!("{a},{v}\n");
    }
    std::fs::write(&csv, &s).unwrap();
    let parquet = dir.path().join("copy.csv");
    std::fs::write(&parquet, &s).unwrap();
    let parquet = convert_csv(&parquet, TableFormat::Parquet).await.unwrap();
    let tables: BTreeMap<String, TableSource> = BTreeMap::from([
        ("accounts".to_string(), csv.into()),
        ("copy".to_string(), parquet.into()),
    ]);
    let engine = Engine::Spark(Remote::parse(&remote).unwrap());
    let rows = |sql: &str| {
        let a = Analysis::parse(&analysis_with(sql)).unwrap();
        let (engine, tables) = (engine.clone(), tables.clone());
        async move {
            let t = engine.open(&tables).await?;
            local_rows(t, &a, "bank-a").await
        }
    };
    let from_csv =
        rows("SELECT acct, sum(amount) AS amount, count(*) AS n FROM accounts GROUP BY acct")
            .await
            .unwrap();
    let from_parquet =
        rows("SELECT acct, sum(amount) AS amount, count(*) AS n FROM copy GROUP BY acct")
            .await
            .unwrap();
    assert_eq!(from_csv.len(), from_parquet.len());
    let sorted = |rows: &[cleanroom::protocol::Row]| {
        let mut v: Vec<(Vec<u8>, Vec<u64>)> = rows
            .iter()
            .map(|r| (r.key.clone(), r.features.clone()))
            .collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&from_csv), sorted(&from_parquet));
    let e = rows("SELECT acct, -1 AS amount, 1 AS n FROM accounts")
        .await
        .unwrap_err();
    assert!(
        matches!(e, DataError::BadFeatureValue { ref column } if column == "amount"),
        "{e}"
    );
    let e = rows("SELECT amount, acct, 1 AS n FROM accounts")
        .await
        .unwrap_err();
    assert!(
        matches!(e, DataError::KeyType { ref column, .. } if column == "amount"),
        "{e}"
    );
    let e = rows("SELECT CAST(NULL AS STRING) AS k, amount, 1 AS n FROM accounts")
        .await
        .unwrap_err();
    assert!(
        matches!(e, DataError::NullKey { ref column } if column == "k"),
        "{e}"
    );
    let e = rows("SELECT acct, CAST(amount AS DOUBLE) AS amount, 1 AS n FROM accounts")
        .await
        .unwrap_err();
    assert!(
        matches!(e, DataError::FeatureType { ref column, .. } if column == "amount"),
        "{e}"
    );
    let e = rows("SELECT acct, amount FROM accounts").await.unwrap_err();
    assert!(
        matches!(e, DataError::MissingFeature { ref column } if column == "n"),
        "{e}"
    );
    // Only a query runs: a command would run at once with the connection's
    // rights.
    let e = rows("DROP VIEW accounts").await.unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Engine {
                engine: "Spark Connect",
                ..
            }
        ),
        "{e}"
    );
    let e = rows("SELECT acct, amount, 1 AS n FROM no_such_table")
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Engine {
                engine: "Spark Connect",
                ..
            }
        ),
        "{e}"
    );
    let catalog = engine
        .open(&tables)
        .await
        .unwrap()
        .catalog(&["accounts".to_string()])
        .await
        .unwrap();
    assert_eq!(catalog.len(), 1);
    let columns: Vec<&str> = catalog[0].columns.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(columns, ["acct", "amount"]);
    assert_eq!(
        catalog[0].approx_rows,
        round_count(banks[0].rows.len() as u64)
    );
    drop(spark);

    // 4. An unreachable remote: the node starts (a cluster may be stopped),
    //    then fails the setup; the coordinator learns the engine's name, the
    //    node's log and `check` name the address.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let unreachable = format!("sc://127.0.0.1:{closed}");
    let mark = log_mark();
    let (got, c) = run_with(&banks, &text, Some(spark_engine(&unreachable))).await;
    let err = got.unwrap_err();
    assert!(
        err.contains("bank-a") && err.contains("(Spark Connect) is unreachable"),
        "{err}"
    );
    assert!(c.results(1).is_empty(), "nothing released");
    assert_eq!(debits(&c, 0), 0, "no budget spent");
    c.stop().await;
    let log = log_since(mark);
    assert!(
        log.contains(&format!("127.0.0.1:{closed} is unreachable")),
        "the node's log names the address"
    );
    let e = Engine::Spark(Remote::parse(&unreachable).unwrap())
        .open(&tables)
        .await
        .err()
        .unwrap();
    assert!(
        matches!(e, DataError::Unreachable { ref address, .. } if *address == format!("127.0.0.1:{closed}")),
        "{e}"
    );
}
