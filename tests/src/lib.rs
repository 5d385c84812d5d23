//! End-to-end tests across processes live in `tests/tests/`; this library holds what they share:
//! locating (and if needed building) the workspace binaries, running them, a minimal HTTP client, and
//! the demo park (`park`) that `vigil-demo` runs and the end-to-end tests reuse.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// The directory holding the workspace binaries of the running profile (test executables live in
/// `target/<profile>/deps`, binaries such as `vigil-demo` in `target/<profile>`).
fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("no target directory")?.to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Builds the binaries the park runs (`vigil-central`, `vigil-edge`, `vigil-sim`) in the running
/// profile; quick when they are up to date, and a stale binary is never started.
pub fn build_binaries() -> Result<()> {
    let mut args = vec!["build", "--quiet", "-p", "vigil-central", "-p", "vigil-edge", "-p", "vigil-tools", "--bins"];
    if bin_dir()?.ends_with("release") {
        args.push("--release");
    }
    let status = Command::new(env!("CARGO")).args(&args).status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// The path of a workspace binary (`vigil-edge`, `vigil-central`, `vigil-sim`), built first if absent.
pub fn binary(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
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

/// A plain HTTP/1.1 GET on 127.0.0.1 without credentials; returns (status, body).
pub fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    http_request(port, "GET", path, None, None)
}

/// A GET with `Authorization: Bearer token`; returns (status, body).
pub fn http_get_auth(port: u16, token: &str, path: &str) -> Result<(u16, String)> {
    http_request(port, "GET", path, Some(token), None)
}

/// An HTTP/1.1 request on 127.0.0.1 with an optional bearer token and JSON body; returns (status, body).
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let body = body.unwrap_or("");
    let content = if body.is_empty() && method == "GET" {
        String::new()
    } else {
        format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len())
    };
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}{content}\r\n{body}")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header end")?;
    let status = head.split_whitespace().nth(1).context("no status")?.parse()?;
    let body =
        if head.to_ascii_lowercase().contains("transfer-encoding: chunked") { dechunk(body) } else { body.to_owned() };
    Ok((status, body))
}

/// Logs in to central's API (waiting up to 30 s for it to come up); returns the session token.
pub fn login(port: u16, user: &str, password: &str) -> Result<String> {
    let body = serde_json::json!({ "user": user, "password": password }).to_string();
    let start = std::time::Instant::now();
    loop {
        match http_request(port, "POST", "/api/v1/auth/login", None, Some(&body)) {
            Ok((200, answer)) => {
                let v: serde_json::Value = serde_json::from_str(&answer)?;
                return v["token"].as_str().map(str::to_owned).context("no token in the login answer");
            }
            Ok((status, answer)) => bail!("login of {user}: {status} {answer}"),
            Err(_) if start.elapsed() < Duration::from_secs(30) => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(e.context("central's API did not come up within 30 s")),
        }
    }
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

pub mod park;
