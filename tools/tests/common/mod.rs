//! Shared helpers: build a plant from TOML, start simulators over real sockets and ptys, collect
//! records with deadlines.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use vigil_common::{EventKind, Quality, Sample};
use vigil_edge::Record;
use vigil_edge::config::{self, Plant};
use vigil_edge::sources::{self, Metrics};
use vigil_tools::sim::{Sim, Unit, points_of};

pub const HEADER: &str = r#"
[gateway]
id = "gw-test"
enterprise = "ent-test"
key_file = "/nonexistent/gw.key"

[spool]
path = "/nonexistent/spool"

[acquisition]
profile_dir = "profiles"
max_silent_s = 60
"#;

/// Writes `body` (after the common header) to a temp dir with the repository's profiles, and loads it.
pub fn plant(dir: &Path, body: &str) -> Plant {
    let profiles = dir.join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    let repo_profiles = Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/profiles");
    for e in std::fs::read_dir(repo_profiles).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), profiles.join(e.file_name())).unwrap();
    }
    let file = dir.join("gateway.toml");
    std::fs::write(&file, format!("{HEADER}\n{body}")).unwrap();
    config::load(&file).unwrap_or_else(|e| panic!("{e}"))
}

/// Fills `sim` with the units of every device of `plant` (by unit id).
pub fn fill(sim: &Sim, plant: &Plant, devices: &[usize]) {
    for &d in devices {
        sim.add_unit(plant.devices[d].unit, Unit::new(points_of(plant, d, 1).unwrap()));
    }
}

/// A TCP listener on a free port of 127.0.0.1.
pub async fn listener() -> (tokio::net::TcpListener, u16) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Serves `sim` on `l` until the returned sender is dropped or set.
pub fn serve_tcp(l: tokio::net::TcpListener, sim: Sim) -> watch::Sender<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(vigil_tools::sim::tcp::serve(l, sim, rx));
    tx
}

/// Running acquisition with its record receiver.
#[derive(Debug)]
pub struct Running {
    pub rx: mpsc::Receiver<Record>,
    pub stop: watch::Sender<bool>,
    pub metrics: Arc<Metrics>,
    pub task: tokio::task::JoinHandle<Result<(), sources::AcquisitionError>>,
}

pub fn start(plant: Plant) -> Running {
    let (tx, rx) = mpsc::channel(4096);
    let (stop, srx) = watch::channel(false);
    let metrics = Arc::new(Metrics::default());
    let task = tokio::spawn(sources::run_acquisition(Arc::new(plant), tx, srx, metrics.clone()));
    Running { rx, stop, metrics, task }
}

impl Running {
    /// Receives records until `pred` matches one, failing after `within`.
    pub async fn until(&mut self, within: Duration, what: &str, mut pred: impl FnMut(&Record) -> bool) -> Record {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => {
                    if pred(&r) {
                        return r;
                    }
                }
                Ok(None) => panic!("record channel closed while waiting for {what}"),
                Err(_) => panic!("no {what} within {within:?}; metrics: {}", self.metrics),
            }
        }
    }

    pub async fn sample(&mut self, within: Duration, point: &str, pred: impl Fn(&Sample) -> bool) -> Sample {
        match self
            .until(
                within,
                &format!("sample of {point}"),
                |r| matches!(r, Record::Sample { point: p, sample } if p.as_str() == point && pred(sample)),
            )
            .await
        {
            Record::Sample { sample, .. } => sample,
            Record::Event(_) => unreachable!(),
        }
    }

    pub async fn event(&mut self, within: Duration, what: &str, pred: impl Fn(&EventKind) -> bool) -> EventKind {
        match self.until(within, what, |r| matches!(r, Record::Event(e) if pred(&e.kind))).await {
            Record::Event(e) => e.kind,
            Record::Sample { .. } => unreachable!(),
        }
    }

    pub async fn shutdown(self) {
        self.stop.send(true).unwrap();
        let Running { mut rx, task, .. } = self;
        let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("acquisition stops on shutdown")
            .unwrap()
            .unwrap();
        drain.await.unwrap();
    }
}

pub fn is_bad(q: Quality) -> bool {
    q.severity() == vigil_common::Severity::Bad
}
