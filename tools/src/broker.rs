//! A real Mosquitto broker with mutual TLS and per-gateway ACLs, started on a free loopback port,
//! for tests and benchmarks. Dropping it kills the broker.

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::pki::{Issued, Pki};

/// A running Mosquitto.
pub struct Mosquitto {
    conf: PathBuf,
    port: u16,
    child: Option<Child>,
}

/// A free TCP port on 127.0.0.1 (bound and released; racy only against other processes).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn mosquitto_binary() -> &'static str {
    if Path::new("/usr/sbin/mosquitto").exists() { "/usr/sbin/mosquitto" } else { "mosquitto" }
}

impl Mosquitto {
    /// Starts a TLS broker in `dir` whose clients must present certificates from `pki`; the
    /// certificate's common name is the MQTT user. `central_user` may do anything under `vigil/`;
    /// every other user may publish only `up/*` and read only `down/*` under its own gateway id.
    pub fn start_tls(dir: &Path, pki: &Pki, server: &Issued, central_user: &str) -> Result<Mosquitto> {
        fs::create_dir_all(dir)?;
        let port = free_port()?;
        let acl = dir.join("acl");
        fs::write(
            &acl,
            format!(
                "user {central_user}\ntopic readwrite vigil/#\n\n\
                 pattern write vigil/v1/+/%u/up/batch\npattern write vigil/v1/+/%u/up/state\n\
                 pattern write vigil/v1/+/%u/up/catalogue\n\
                 pattern read vigil/v1/+/%u/down/ack\npattern read vigil/v1/+/%u/down/cmd\n"
            ),
        )?;
        let conf = dir.join("mosquitto.conf");
        fs::write(
            &conf,
            format!(
                "user root\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n\
                 listener {port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\n\
                 require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n\
                 acl_file {}\nmax_inflight_messages 1000\nmax_queued_messages 100000\n",
                pki.ca_file().display(),
                server.cert.display(),
                server.key.display(),
                acl.display()
            ),
        )?;
        let mut broker = Mosquitto { conf, port, child: None };
        broker.start()?;
        Ok(broker)
    }

    /// The broker's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts (or restarts after [`Mosquitto::stop`]) the broker process and waits until it listens.
    pub fn start(&mut self) -> Result<()> {
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(self.conf.with_extension("log"))?))
            .spawn()
            .context("starting mosquitto (apt-get install mosquitto)")?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let log = fs::read_to_string(self.conf.with_extension("log")).unwrap_or_default();
                bail!("mosquitto exited at start with {status} (config {}):\n{log}", self.conf.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("mosquitto did not listen on port {} within 10 s", self.port)
    }

    /// Kills the broker (SIGKILL): its sessions and queues are lost, as in a crash.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}
