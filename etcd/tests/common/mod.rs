//! Shared by the etcd tests: where the test etcd is, and private etcd servers for the fault
//! tests.
#![allow(dead_code)]

pub mod bank;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use stm_store_etcd::blocking::EtcdStore;
use stm_store_etcd::Options;

/// The etcd that `.ci/run` starts (`STM_ETCD_ENDPOINTS`, comma-separated).
pub fn endpoints() -> Vec<String> {
    let Ok(list) = std::env::var("STM_ETCD_ENDPOINTS") else {
        panic!(
            "STM_ETCD_ENDPOINTS is not set: these tests need a running etcd. Start one, e.g.\n  \
             etcd --data-dir /tmp/e --listen-client-urls http://127.0.0.1:23790 \
             --advertise-client-urls http://127.0.0.1:23790 --listen-peer-urls http://127.0.0.1:23800\n\
             then STM_ETCD_ENDPOINTS=127.0.0.1:23790 cargo test -p stm-store-etcd (.ci/run does this)"
        )
    };
    list.split(',').map(str::to_string).collect()
}

/// A prefix no other test (or earlier run) uses.
pub fn fresh_prefix(name: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "test/{name}/{}-{nanos:x}-{}/",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A blocking store on the shared test etcd, under a fresh prefix.
pub fn etcd_store<V>(name: &str) -> EtcdStore<String, V> {
    EtcdStore::connect(endpoints(), fresh_prefix(name)).expect("connect to the test etcd")
}

/// Raw access to an etcd (the test etcd by default), as "someone else".
pub fn raw<T>(f: impl AsyncFnOnce(&mut etcd_client::Client) -> T) -> T {
    raw_at(&endpoints(), f)
}

/// Raw access to the etcd at `at`.
pub fn raw_at<T>(at: &[String], f: impl AsyncFnOnce(&mut etcd_client::Client) -> T) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = etcd_client::Client::connect(at, None).await.unwrap();
        f(&mut client).await
    })
}

/// Every etcd key under `prefix` in the test etcd, with its etcd version.
pub fn etcd_keys(prefix: &str) -> Vec<(Vec<u8>, i64)> {
    raw(async |c: &mut etcd_client::Client| {
        let options = etcd_client::GetOptions::new().with_prefix();
        let response = c.get(prefix, Some(options)).await.unwrap();
        response
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), kv.version()))
            .collect()
    })
}

pub fn k(s: &str) -> String {
    s.to_string()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One private etcd starts at a time in this process (ports picked, etcd up), so that two
/// cannot be handed the same free port.
fn starting() -> std::sync::MutexGuard<'static, ()> {
    static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    STARTING.lock().unwrap_or_else(|e| e.into_inner())
}

/// A private etcd for one test: its own ports and data directory, killed on drop.
pub struct EtcdServer {
    pub endpoint: String,
    peer: String,
    dir: PathBuf,
    child: Option<Child>,
}

impl EtcdServer {
    pub fn start(name: &str) -> Self {
        let _one = starting();
        let dir = std::env::temp_dir().join(format!(
            "stm-etcd-{name}-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut server = Self {
            endpoint: format!("127.0.0.1:{}", free_port()),
            peer: format!("127.0.0.1:{}", free_port()),
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .unwrap();
        let child = Command::new("etcd")
            .arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .arg("--listen-client-urls")
            .arg(format!("http://{}", self.endpoint))
            .arg("--advertise-client-urls")
            .arg(format!("http://{}", self.endpoint))
            .arg("--listen-peer-urls")
            .arg(format!("http://{}", self.peer))
            .arg("--initial-advertise-peer-urls")
            .arg(format!("http://{}", self.peer))
            .arg("--initial-cluster")
            .arg(format!("test=http://{}", self.peer))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start etcd (is etcd-server installed?)");
        self.child = Some(child);
        self.wait_ready();
        let status = self.child.as_mut().unwrap().try_wait().unwrap();
        assert!(
            status.is_none(),
            "etcd at {} exited ({status:?}): is the port taken? its log: {}",
            self.endpoint,
            self.dir.join("etcd.log").display()
        );
    }

    /// Polls until etcd answers; panics after 60 s (a liveness bound, not a timing check).
    pub fn wait_ready(&self) {
        let started = Instant::now();
        loop {
            let options = Options {
                budget: Duration::from_millis(500),
                request_timeout: Duration::from_millis(500),
                ..Options::default()
            };
            if EtcdStore::<String, i64>::connect_with([&self.endpoint], "ready/", options).is_ok() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "etcd at {} did not come up; its log: {}",
                self.endpoint,
                self.dir.join("etcd.log").display()
            );
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("etcd running").id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} etcd");
    }

    /// SIGSTOP: etcd keeps its sockets but answers nothing. Returns once the kernel shows the
    /// process stopped.
    pub fn pause(&self) {
        self.signal("STOP");
        let stat = format!("/proc/{}/stat", self.pid());
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(&stat).unwrap_or_default();
            // The state follows the command name in parentheses.
            let state = text
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next());
            if state == Some('T') {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "etcd did not stop: {text}"
            );
            std::thread::yield_now();
        }
    }

    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// SIGKILL, then a new etcd on the same data directory and ports.
    pub fn kill_and_restart(&mut self) {
        let _one = starting();
        self.kill();
        self.spawn();
    }

    /// A new etcd on the same data directory and ports, after [`kill`](Self::kill).
    pub fn restart(&mut self) {
        let _one = starting();
        self.spawn();
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
