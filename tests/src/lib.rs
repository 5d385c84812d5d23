//! End-to-end tests across processes live in `tests/tests/`; this library holds what they share:
//! locating (and if needed building) the workspace binaries, running them, and a minimal HTTP client.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The path of a workspace binary (`vigil-edge`, `vigil-central`, `vigil-sim`), built first if absent.
pub fn binary(name: &str) -> Result<PathBuf> {
    // Test executables live in target/<profile>/deps; the binaries one level up.
    let exe = std::env::current_exe()?;
    let dir = exe.parent().and_then(|d| d.parent()).context("no target directory")?.to_owned();
    let path = dir.join(name);
    if !path.exists() {
        let package = match name {
            "vigil-sim" => "vigil-tools",
            other => other,
        };
        let status = Command::new(env!("CARGO")).args(["build", "-p", package, "--bin", name]).status()?;
        if !status.success() {
            bail!("building {name} failed");
        }
    }
    Ok(path)
}

/// Runs a binary to completion and returns its standard output.
pub fn run_to_end(name: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(binary(name)?).args(args).output()?;
    if !out.status.success() {
        bail!("{name} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Starts a binary in the background, its log in `log`.
pub fn spawn(name: &str, args: &[&str], log: &std::path::Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
    Ok(Command::new(binary(name)?)
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()?)
}

/// Sends SIGTERM (an orderly stop) and waits up to 15 s for the process to exit.
pub fn terminate(child: &mut Child) -> Result<()> {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    for _ in 0..150 {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill()?;
    bail!("process {} ignored SIGTERM for 15 s", child.id())
}

/// A plain HTTP/1.1 GET on 127.0.0.1; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head.split_whitespace().nth(1).context("no status")?.parse()?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
