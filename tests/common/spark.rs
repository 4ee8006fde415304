//! A real Spark Connect server for the tests: Apache Spark from the
//! `pyspark` package (PyPI) on Java 17, started on 127.0.0.1 with an
//! ephemeral port and stopped (SIGTERM) when dropped.
//!
//! Where it comes from: `$SPARK_HOME` if set, else the venv
//! `$CLEANROOM_SPARK_VENV` (default `/var/tmp/cleanroom-spark/venv`, which
//! `.ci/run` creates). Java: `$JAVA_HOME/bin/java`, else `java` on the PATH.
//! Without either the test fails saying how to install it: it never passes
//! silently.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The install line the failures print.
const INSTALL: &str = "install Java 17 and pyspark as .ci/run does: \
     `apt-get install -y openjdk-17-jre-headless` and \
     `python3 -m venv /var/tmp/cleanroom-spark/venv && \
     /var/tmp/cleanroom-spark/venv/bin/pip install 'pyspark[connect]==4.0.1'` \
     (or point SPARK_HOME at a Spark 4 install, CLEANROOM_SPARK_VENV at another venv)";

/// How long Spark may take to listen (it takes 15–30 s on 2 busy cores).
const START: Duration = Duration::from_secs(240);

/// A running Spark Connect server.
pub struct SparkServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Spark's work directory (logs, scratch space).
    pub dir: tempfile::TempDir,
}

fn spark_home() -> PathBuf {
    if let Some(h) = std::env::var_os("SPARK_HOME") {
        return PathBuf::from(h);
    }
    let venv = std::env::var_os("CLEANROOM_SPARK_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/cleanroom-spark/venv"));
    let lib = venv.join("lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|d| {
        d.flatten()
            .map(|e| e.path().join("site-packages/pyspark"))
            .find(|p| p.join("bin/spark-submit").exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "no pyspark in {} (and SPARK_HOME is not set): {INSTALL}",
            venv.display()
        )
    })
}

fn java() -> PathBuf {
    let java = std::env::var_os("JAVA_HOME")
        .map(|h| Path::new(&h).join("bin/java"))
        .unwrap_or_else(|| PathBuf::from("java"));
    let ok = Command::new(&java)
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the Spark tests need Java 17 ({} does not run): {INSTALL}",
        java.display()
    );
    java
}

impl SparkServer {
    /// Starts a local Spark Connect server and waits until it listens.
    pub fn start() -> SparkServer {
        let home = spark_home();
        let java = java();
        let submit = home.join("bin/spark-submit");
        assert!(submit.exists(), "no {}: {INSTALL}", submit.display());
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path();
        for d in ["logs", "conf", "tmp", "local", "warehouse"] {
            std::fs::create_dir_all(work.join(d)).unwrap();
        }
        let tmp = work.join("tmp").display().to_string();
        let mut cmd = Command::new(&submit);
        cmd.current_dir(work)
            .env("SPARK_HOME", &home)
            .env("SPARK_LOCAL_IP", "127.0.0.1")
            .env("SPARK_LOCAL_HOSTNAME", "localhost")
            .env("SPARK_LOG_DIR", work.join("logs"))
            .env("SPARK_CONF_DIR", work.join("conf"))
            .env("SPARK_LAUNCHER_OPTS", "-XX:-UsePerfData")
            .args([
                "--class",
                "org.apache.spark.sql.connect.service.SparkConnectServer",
                "--name",
                "cleanroom-test",
                "--master",
                "local[2]",
                "--driver-memory",
                "1g",
                "--driver-java-options",
                &format!("-XX:-UsePerfData -Djava.io.tmpdir={tmp} -Dderby.system.home={tmp}"),
            ]);
        for (k, v) in [
            (
                "spark.connect.grpc.binding.address",
                "127.0.0.1".to_string(),
            ),
            ("spark.connect.grpc.binding.port", "0".to_string()),
            ("spark.driver.host", "127.0.0.1".to_string()),
            ("spark.driver.bindAddress", "127.0.0.1".to_string()),
            ("spark.blockManager.port", "0".to_string()),
            ("spark.ui.enabled", "false".to_string()),
            ("spark.local.dir", work.join("local").display().to_string()),
            (
                "spark.sql.warehouse.dir",
                work.join("warehouse").display().to_string(),
            ),
            ("spark.sql.catalogImplementation", "in-memory".to_string()),
            ("spark.sql.shuffle.partitions", "2".to_string()),
            ("spark.eventLog.enabled", "false".to_string()),
        ] {
            cmd.arg("--conf").arg(format!("{k}={v}"));
        }
        if let Some(bin) = java.parent().filter(|p| !p.as_os_str().is_empty()) {
            cmd.env("JAVA_HOME", bin.parent().unwrap_or(bin));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}: {INSTALL}", submit.display()));
        // Spark logs to stderr: keep it in a file (shown on failure) and
        // watch it for the line that gives the port.
        let stderr = child.stderr.take().unwrap();
        let log_path = work.join("logs/server.log");
        let (tx, rx) = mpsc::channel();
        let log = log_path.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::File::create(&log).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(file, "{line}");
                if let Some(rest) = line.split("Spark Connect server started at: ").nth(1) {
                    let port = rest.trim().rsplit(':').next().and_then(|p| p.parse().ok());
                    let _ = tx.send(port);
                }
            }
        });
        let port = match rx.recv_timeout(START) {
            Ok(Some(port)) => port,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!(
                    "Spark Connect did not start ({other:?}); the end of its log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        };
        SparkServer { child, port, dir }
    }

    /// The connection string of this server.
    pub fn remote(&self) -> String {
        format!("sc://127.0.0.1:{}", self.port)
    }
}

impl Drop for SparkServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
