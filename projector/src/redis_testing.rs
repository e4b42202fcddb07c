//! What the tests of the Redis backends (presence, feeds and the API's coordination) share: the
//! shared Redis named by `SWITCHBOARD_REDIS` and the shared Redis Cluster named by
//! `SWITCHBOARD_REDIS_CLUSTER` (`ops/engines/start.sh` runs both), a key prefix of each test's own
//! in them, and a throwaway `redis-server` for tests that stop, freeze or kill Redis without
//! disturbing the shared one.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Client;
use tokio::time::{sleep, timeout};

use crate::redis_client::RedisConfig;

/// The shared Redis, or `None` when the test is to be skipped.
pub fn shared_redis() -> Option<String> {
    engine_url("SWITCHBOARD_REDIS")
}

/// The URL in `variable`, or `None` when the test is to be skipped; a failure when the engines
/// are required but not configured.
fn engine_url(variable: &str) -> Option<String> {
    let Ok(url) = std::env::var(variable) else {
        assert!(
            std::env::var("SWITCHBOARD_REQUIRE_ENGINES").as_deref() != Ok("1"),
            "{variable} is unset: run ops/engines/start.sh and set it as ops/test.sh does"
        );
        eprintln!("skipped: {variable} is unset");
        return None;
    };
    Some(url)
}

/// One test's share of the shared Redis: a key prefix nobody else uses.
pub struct Namespace {
    pub url: String,
    pub prefix: String,
}

impl Namespace {
    /// A fresh namespace in the shared Redis, or `None` when the test is to be skipped.
    pub fn new() -> Option<Namespace> {
        Namespace::in_engine("SWITCHBOARD_REDIS")
    }

    /// A fresh namespace in the shared Redis Cluster, or `None` when the test is to be skipped.
    pub fn in_cluster() -> Option<Namespace> {
        Namespace::in_engine("SWITCHBOARD_REDIS_CLUSTER")
    }

    fn in_engine(variable: &str) -> Option<Namespace> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let started = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let prefix = format!(
            "sb-test:{}-{started}-{}:",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        Some(Namespace { url: engine_url(variable)?, prefix })
    }

    /// The configuration of a backend that keeps its keys under this namespace's prefix.
    pub fn config(&self) -> RedisConfig {
        let mut config =
            RedisConfig::from_url(&self.url).expect("the shared Redis has a Redis URL");
        config.prefix.clone_from(&self.prefix);
        config
    }

    /// Every key under the prefix, bare or in a hash tag (`{prefix}…`), on every server, sorted.
    pub async fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for mut server in self.servers().await {
            keys.extend(self.keys_on(&mut server).await);
        }
        keys.sort();
        keys
    }

    /// The servers: the one Redis, or each node of the cluster the URL names.
    async fn servers(&self) -> Vec<redis::aio::MultiplexedConnection> {
        let config = self.config();
        let servers = if config.is_cluster() { config.cluster } else { vec![config.connection] };
        let mut connections = Vec::new();
        for server in servers {
            let client = Client::open(server).expect("a Redis server's address");
            connections
                .push(client.get_multiplexed_async_connection().await.expect("a connection"));
        }
        connections
    }

    async fn keys_on(&self, redis: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
        let (mut cursor, mut keys) = (0_u64, Vec::new());
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("*{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(redis)
                .await
                .expect("SCAN on the shared Redis");
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    /// Removes `keys`, as Redis losing them would.
    pub async fn delete(&self, keys: &[String]) {
        if !keys.is_empty() {
            let mut redis = self.connection().await;
            let () = redis::cmd("UNLINK")
                .arg(keys)
                .query_async(&mut redis)
                .await
                .expect("UNLINK on the shared Redis");
        }
    }

    /// Removes every key under the prefix, from each server the keys it holds.
    pub async fn remove_keys(&self) {
        for mut server in self.servers().await {
            // One key per command: in a cluster, one command's keys must share a slot.
            let keys = self.keys_on(&mut server).await;
            if keys.is_empty() {
                continue;
            }
            let mut unlink = redis::pipe();
            for key in keys {
                unlink.cmd("UNLINK").arg(key).ignore();
            }
            let () = unlink.query_async(&mut server).await.expect("UNLINK on the shared Redis");
        }
    }

    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        let client = Client::open(self.url.as_str()).expect("SWITCHBOARD_REDIS is a redis:// URL");
        client.get_multiplexed_async_connection().await.expect("a connection to the shared Redis")
    }
}

/// A `redis-server` of the test's own on a free loopback port, killed when dropped.
pub struct Throwaway {
    process: Child,
}

impl Throwaway {
    /// A free loopback port for a throwaway server to start on later.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    }

    /// Starts the server and waits until it accepts connections.
    pub async fn start(port: u16) -> Throwaway {
        Throwaway::start_with(port, &[]).await
    }

    /// Starts the server with `settings` after its own (a later setting wins), and waits until
    /// `port` accepts connections.
    pub async fn start_with(port: u16, settings: &[&str]) -> Throwaway {
        let process = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(settings)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (ops/engines/fetch.sh redis installs it)");
        let server = Throwaway { process };
        let accepting = async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                sleep(Duration::from_millis(20)).await;
            }
        };
        timeout(Duration::from_secs(10), accepting).await.expect("redis-server did not start");
        server
    }

    /// Sends the server a signal, e.g. `STOP` to freeze it with its connections open.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.process.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        // SIGKILL: Redis disappears mid-conversation, as in a crash.
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// A failure guard only: a call that takes this long has hung.
pub async fn within<T>(call: impl Future<Output = T>) -> T {
    timeout(Duration::from_secs(10), call).await.expect("a call hung instead of failing")
}

/// A CA and a certificate it signed for `127.0.0.1`, made with the `openssl` command.
pub struct Certificates {
    /// The CA's certificate, which clients trust.
    pub ca: String,
    pub server_certificate: String,
    pub server_key: String,
}

impl Certificates {
    /// Makes them in `dir`, which must have a UTF-8 path.
    pub fn make(dir: &Path) -> Certificates {
        let path = |name: &str| dir.join(name).to_str().expect("a UTF-8 path").to_owned();
        let [ca, ca_key, certificate, key, request, san] =
            ["ca.pem", "ca.key", "server.pem", "server.key", "server.csr", "san.cnf"].map(path);
        std::fs::write(&san, "subjectAltName=IP:127.0.0.1\n").expect("write the SAN extension");
        let openssl = |args: &[&str]| {
            let output = Command::new("openssl")
                .args(args)
                .output()
                .expect("openssl (ops/deps.sh installs it)");
            let error = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "openssl {args:?}: {error}");
        };
        let new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let ca_subject = ["req", "-x509", "-days", "1", "-subj", "/CN=switchboard test CA"];
        openssl(&[&ca_subject[..], &new_key, &["-keyout", &ca_key, "-out", &ca]].concat());
        let server_subject = ["req", "-subj", "/CN=127.0.0.1"];
        openssl(&[&server_subject[..], &new_key, &["-keyout", &key, "-out", &request]].concat());
        openssl(&[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &request,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            &san,
            "-out",
            &certificate,
        ]);
        Certificates { ca, server_certificate: certificate, server_key: key }
    }
}
