//! `vigil-edge`: the gateway agent (`run`), key provisioning and enrolment (`enroll`), and the
//! technician commands for acquisition: `check` (validate a configuration), `read` (one read cycle as
//! JSON), `scan modbus` (raw registers with every plausible interpretation) and `acquire` (run
//! acquisition alone and print counters).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use vigil_common::{EventKind, Value};
use vigil_edge::Record;
use vigil_edge::config::{self, Plant, RegisterKind, Transport};
use vigil_edge::sources::modbus::{Data, Endpoint, Link};
use vigil_edge::sources::{self, Metrics};

mod enroll;

/// Vigil gateway agent.
#[derive(Parser)]
#[command(version, about = "Vigil gateway agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: sources, spool and uplink, until SIGINT or SIGTERM.
    Run {
        /// The gateway configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Generate this gateway's signing key (mode 0600) and print the public key to register at central.
    Keygen {
        /// Where to write the key; an existing file is never replaced.
        #[arg(long, default_value = "gateway.key")]
        out: PathBuf,
    },
    /// Enrol this gateway at central with a one-time token: generates its signing and TLS keys here,
    /// has central register the key and sign the certificate, and writes keys, certificate, CA and a
    /// `gateway-enrolled.toml` snippet into DIR (HTTPS to central, checked against --ca).
    Enroll {
        /// Central's API, https://HOST:PORT (or http://HOST:PORT when central's API has no TLS).
        #[arg(long)]
        central: String,
        /// The park CA certificate (PEM) central's HTTPS certificate must chain to; required with
        /// an https:// --central.
        #[arg(long)]
        ca: Option<PathBuf>,
        /// The enrolment token an administrator created (`POST /api/v1/enrolments`).
        #[arg(long)]
        token: String,
        /// This gateway's id (the token's gateway).
        #[arg(long)]
        id: String,
        /// Directory for the files; existing files are never replaced.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Print the public key of an existing key file.
    Pubkey {
        /// The key file.
        #[arg(long, default_value = "gateway.key")]
        key: PathBuf,
    },
    /// Validate a configuration and print its devices, points and planned requests.
    Check(ConfigArg),
    /// Print the point catalogue of a configuration as JSON (devices, points, units, ranges): what
    /// the agent sends central on every connect, and what `PUT /api/v1/gateways/{id}/catalogue`
    /// imports for a gateway that is not connected yet.
    Catalogue(ConfigArg),
    /// Read every point once and print value, quality and timestamp; exit 1 if a device failed.
    Read {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this device.
        #[arg(long)]
        device: Option<String>,
        /// Print JSON (the default and only format today; accepted for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Dump raw registers of a device with each plausible interpretation.
    Scan {
        #[command(subcommand)]
        what: ScanWhat,
    },
    /// OPC UA tools for technicians.
    Opcua {
        #[command(subcommand)]
        what: OpcuaWhat,
    },
    /// Run acquisition alone for a while, discarding the records, and print counters, CPU time and
    /// peak memory (commissioning and benchmarks).
    Acquire {
        #[command(flatten)]
        config: ConfigArg,
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Signed update bundles: make release keys and bundles, verify, apply (A/B, on trial), status.
    Update {
        #[command(subcommand)]
        what: vigil_edge::update::cli::UpdateCommand,
    },
    /// What the service runs: starts the installed (`current`) agent version, commits an update
    /// once it is healthy, rolls it back when it is not.
    Launch(vigil_edge::update::cli::LaunchArgs),
    /// Fetch the local status page's JSON and print a compact summary (password from
    /// VIGIL_STATUS_PASSWORD or the first line of stdin).
    Status {
        /// The status page, http://HOST:PORT (`[status] listen`).
        #[arg(long, default_value = "http://127.0.0.1:8081")]
        url: String,
        /// The user (`[status] user`).
        #[arg(long, default_value = "technician")]
        user: String,
        /// Print the JSON instead of the summary.
        #[arg(long)]
        json: bool,
        /// Instead: read a password from stdin and print its Argon2 hash for `[status] password_hash`.
        #[arg(long)]
        hash_password: bool,
    },
}

#[derive(Args)]
struct ConfigArg {
    /// The gateway configuration file.
    #[arg(long)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum OpcuaWhat {
    /// List the address space under a node (node ids ready for the configuration, current values).
    Browse(BrowseArgs),
    /// Trust a server certificate (DER or PEM; e.g. one the agent wrote to rejected/).
    Trust {
        /// The gateway's OPC UA PKI directory (`pki_dir` of the `[[opcua]]` entry).
        #[arg(long, default_value = "opcua-pki")]
        pki_dir: PathBuf,
        /// The server certificate file.
        #[arg(long)]
        cert: PathBuf,
    },
}

#[derive(Args)]
struct BrowseArgs {
    /// Server endpoint, opc.tcp://HOST:PORT[/PATH].
    #[arg(long)]
    endpoint: String,
    /// Start node (default: the Objects folder, i=85).
    #[arg(long, default_value = "i=85")]
    node: String,
    /// Levels to descend.
    #[arg(long, default_value_t = 3)]
    depth: u32,
    /// Security policy: None or Basic256Sha256.
    #[arg(long, default_value = "None")]
    security_policy: String,
    /// Security mode: None, Sign or SignAndEncrypt.
    #[arg(long, default_value = "None")]
    security_mode: String,
    /// PKI directory of the gateway (its certificate, trusted/ and rejected/ server certificates).
    #[arg(long, default_value = "opcua-pki")]
    pki_dir: PathBuf,
    /// Trust the server's certificate without it being in trusted/ (commissioning only).
    #[arg(long)]
    trust_unknown_server: bool,
    /// User name (password from --password or the VIGIL_OPCUA_PASSWORD environment variable).
    #[arg(long)]
    user: Option<String>,
    /// Password for --user.
    #[arg(long)]
    password: Option<String>,
    /// Timeout per request in ms.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

#[derive(Subcommand)]
enum ScanWhat {
    /// Modbus TCP or RTU.
    Modbus(ScanArgs),
}

#[derive(Args)]
struct ScanArgs {
    /// Modbus TCP device, HOST:PORT.
    #[arg(long, conflicts_with = "rtu", required_unless_present = "rtu")]
    tcp: Option<String>,
    /// Serial port of a Modbus RTU bus.
    #[arg(long)]
    rtu: Option<PathBuf>,
    /// Baud rate (RTU).
    #[arg(long, default_value_t = 9600)]
    baud: u32,
    /// Parity (RTU): none, even, odd.
    #[arg(long, default_value = "none")]
    parity: String,
    /// Unit (slave) id.
    #[arg(long, default_value_t = 1)]
    unit: u8,
    /// First address (0-based protocol address).
    #[arg(long, default_value_t = 0)]
    start: u16,
    /// Number of registers (1..=125).
    #[arg(long, default_value_t = 10)]
    count: u16,
    /// Register area: holding, input, coil, discrete_input.
    #[arg(long, default_value = "holding")]
    kind: String,
    /// Timeout in ms.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Keygen { .. } | Command::Pubkey { .. } | Command::Enroll { .. }) {
        // The agent reports its life at info; the technician commands stay quiet unless asked.
        tracing_subscriber_init(if matches!(cli.command, Command::Run { .. } | Command::Launch(_)) {
            "info"
        } else {
            "warn"
        });
    }
    match cli.command {
        Command::Run { config } => run(&config)?,
        Command::Keygen { out } => {
            let key = vigil_common::keyfile::create(&out).context("creating the gateway key")?;
            println!("{}", key.public_key().to_text());
            eprintln!("wrote {} (owner-only); register the public key above at central", out.display());
        }
        Command::Enroll { central, ca, token, id, dir } => {
            let snippet = runtime()?.block_on(enroll::enroll(&central, &token, &id, &dir, ca.as_deref()))?;
            println!("{}", snippet.display());
            eprintln!("enrolled {id}; merge {} into the gateway configuration", snippet.display());
        }
        Command::Pubkey { key } => {
            let key = vigil_common::keyfile::load(&key).context("reading the gateway key")?;
            println!("{}", key.public_key().to_text());
        }
        Command::Catalogue(c) => {
            let plant = load(&c.config)?;
            let bytes = std::fs::read(&c.config).with_context(|| format!("reading {}", c.config.display()))?;
            let sha: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(&bytes).into();
            let catalogue = vigil_edge::catalogue::of(&plant, sha, vigil_edge::spool::now_ms());
            catalogue.validate().with_context(|| format!("the catalogue of {}", c.config.display()))?;
            let doc = vigil_common::catalogue::CatalogueDocument::from(&catalogue);
            emit(&format!("{}\n", serde_json::to_string_pretty(&doc).context("encoding the catalogue")?))?;
        }
        Command::Check(c) => {
            check(&load(&c.config)?)?;
            // Which file the agent runs: a pushed configuration may override this one.
            match vigil_edge::config_push::select(&c.config) {
                Ok(s) => emit(&format!("the agent runs: {}\n", s.reason))?,
                Err(e) => emit(&format!("the agent runs: unknown ({e})\n"))?,
            }
        }
        Command::Read { config, device, json: _ } => {
            let plant = load(&config.config)?;
            if let Some(d) = &device
                && !plant.devices.iter().any(|x| &x.name == d)
            {
                bail!("{}: no device named {d:?}", config.config.display());
            }
            let failed = runtime()?.block_on(read(plant, device))?;
            if failed {
                std::process::exit(1);
            }
        }
        Command::Scan { what: ScanWhat::Modbus(a) } => runtime()?.block_on(scan(a))?,
        Command::Opcua { what: OpcuaWhat::Browse(a) } => runtime()?.block_on(opcua_browse(a))?,
        Command::Opcua { what: OpcuaWhat::Trust { pki_dir, cert } } => {
            let path = vigil_edge::sources::opcua::trust_certificate(&pki_dir, &cert).map_err(|e| anyhow!("{e}"))?;
            println!("{}", path.display());
        }
        Command::Acquire { config, seconds } => {
            let plant = load(&config.config)?;
            runtime()?.block_on(acquire(plant, Duration::from_secs(seconds)))?;
        }
        Command::Update { what } => vigil_edge::update::cli::run(what)?,
        Command::Status { url, user, json, hash_password } => status(&url, &user, json, hash_password)?,
        Command::Launch(args) => {
            let code = vigil_edge::update::cli::launch(args).context("launcher")?;
            std::process::exit(code);
        }
    }
    Ok(())
}

fn status(url: &str, user: &str, json: bool, hash_password: bool) -> Result<()> {
    let password = match std::env::var("VIGIL_STATUS_PASSWORD") {
        Ok(p) if !hash_password => p,
        _ => {
            if hash_password {
                eprintln!("password (one line on stdin):");
            }
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).context("reading the password from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if hash_password {
        if password.len() < 8 {
            bail!("use a password of at least 8 characters");
        }
        let hash = vigil_edge::status::hash_password(&password).map_err(|e| anyhow!("hashing: {e}"))?;
        return emit(&format!("{hash}\n"));
    }
    let s = runtime()?
        .block_on(vigil_edge::status::fetch(url, user, &password, Duration::from_secs(10)))
        .context("fetching the status")?;
    if json {
        emit(&(serde_json::to_string_pretty(&s).context("printing JSON")? + "\n"))
    } else {
        emit(&vigil_edge::status::summary_text(&s))
    }
}

fn tracing_subscriber_init(default_level: &str) {
    // Logs go to stderr so `read --json` output stays machine-readable. RUST_LOG selects the level.
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| default_level.into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

fn load(path: &Path) -> Result<Plant> {
    config::load(path).map_err(|e| anyhow!("{e}\nnothing was started"))
}

fn check(plant: &Plant) -> Result<()> {
    use std::fmt::Write as _;
    let mut o = String::new();
    let requests: usize = plant.devices.iter().map(|d| d.requests.len()).sum();
    let _ = writeln!(
        o,
        "{}: OK: {} device(s), {} bus(es), {} point(s), {} planned request(s), {} levelling line(s)",
        plant.file.display(),
        plant.devices.len(),
        plant.buses.len(),
        plant.points.len(),
        requests,
        plant.levelling.len()
    );
    for b in &plant.buses {
        let _ = writeln!(
            o,
            "bus {} {} {} baud {}{}{} gap {:.2} ms",
            b.name,
            b.path.display(),
            b.baud,
            b.data_bits,
            match b.parity {
                config::Parity::None => 'N',
                config::Parity::Even => 'E',
                config::Parity::Odd => 'O',
            },
            b.stop_bits,
            b.frame_gap().as_secs_f64() * 1000.0
        );
    }
    for d in &plant.devices {
        let at = match &d.transport {
            Transport::Tcp { host, port } => format!("tcp {host}:{port}"),
            Transport::Rtu { bus } => format!("rtu {}", plant.buses[*bus].name),
            Transport::Opcua { index } => vigil_edge::sources::opcua::describe(&plant.opcua[*index]),
        };
        let _ = writeln!(
            o,
            "device {} ({at} unit {}) profile {} points {} timeout {} ms retries {}",
            d.name,
            d.unit,
            d.profile.as_deref().unwrap_or("-"),
            d.points.len(),
            d.timeout.as_millis(),
            d.retries
        );
        if let Transport::Opcua { index } = &d.transport {
            for item in &plant.opcua[*index].items {
                let _ = writeln!(
                    o,
                    "  node {} -> {} every {} ms queue {}{}",
                    item.node,
                    plant.points[item.point].id,
                    item.sampling.as_millis(),
                    item.queue_size,
                    match item.deadband {
                        Some(vigil_edge::sources::opcua::config::ServerDeadband::Absolute(v)) =>
                            format!(" deadband {v}"),
                        Some(vigil_edge::sources::opcua::config::ServerDeadband::Percent(v)) =>
                            format!(" deadband {v}%"),
                        None => String::new(),
                    }
                );
            }
        }
        for r in &d.requests {
            let _ = writeln!(
                o,
                "  read {} {}+{} every {} ms: {} point(s)",
                r.kind.name(),
                r.start,
                r.count,
                r.poll.as_millis(),
                r.points.len()
            );
        }
    }
    for l in &plant.levelling {
        let _ = writeln!(o, "levelling {} base {} points {}", l.name, plant.points[l.base].id, l.points.len());
    }
    emit(&o)
}

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly instead of panicking.
fn emit(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("writing to stdout"),
        _ => Ok(()),
    }
}

fn value_json(v: &Value) -> serde_json::Value {
    match v {
        Value::F64(f) => serde_json::json!(f),
        Value::I64(i) => serde_json::json!(i),
        Value::Bool(b) => serde_json::json!(b),
        Value::Text(t) => serde_json::json!(t),
    }
}

async fn read(plant: Plant, device: Option<String>) -> Result<bool> {
    let metrics = Arc::new(Metrics::default());
    let plant = Arc::new(plant);
    let records = sources::read_once(plant.clone(), device.as_deref(), metrics).await?;
    let units: std::collections::HashMap<&str, &str> =
        plant.points.iter().map(|p| (p.id.as_str(), p.unit.as_str())).collect();
    let mut samples = Vec::new();
    let mut events = Vec::new();
    let mut failed = Vec::new();
    for r in &records {
        match r {
            Record::Sample { point, sample } => samples.push(serde_json::json!({
                "point": point.as_str(),
                "value": value_json(&sample.value),
                "unit": units.get(point.as_str()).copied().unwrap_or(""),
                "quality": sample.quality.to_string(),
                "quality_code": sample.quality.0,
                "ts_ms": sample.ts_ms,
            })),
            Record::Event(e) => {
                if let EventKind::DeviceOffline { device, .. } = &e.kind {
                    failed.push(device.clone());
                }
                events.push(serde_json::json!({ "ts_ms": e.ts_ms, "event": format!("{:?}", e.kind) }));
            }
        }
    }
    let out = serde_json::json!({ "samples": samples, "events": events, "failed_devices": failed });
    emit(&(serde_json::to_string_pretty(&out).context("printing JSON")? + "\n"))?;
    Ok(!failed.is_empty())
}

fn parse_kind(s: &str) -> Result<RegisterKind> {
    Ok(match s {
        "holding" => RegisterKind::Holding,
        "input" => RegisterKind::Input,
        "coil" => RegisterKind::Coil,
        "discrete_input" => RegisterKind::DiscreteInput,
        _ => bail!("--kind must be holding, input, coil or discrete_input, not {s:?}"),
    })
}

async fn scan(a: ScanArgs) -> Result<()> {
    let kind = parse_kind(&a.kind)?;
    let limit = if kind.is_bits() { 2000 } else { 125 };
    if a.count == 0 || a.count > limit || u32::from(a.start) + u32::from(a.count) > 65_536 {
        bail!("--count must be 1..={limit} and the range must end by address 65535");
    }
    let endpoint = match (&a.tcp, &a.rtu) {
        (Some(t), None) => {
            let (host, port) = t.rsplit_once(':').with_context(|| format!("--tcp {t:?}: expected HOST:PORT"))?;
            Endpoint::Tcp(
                host.trim_matches(['[', ']']).to_string(),
                port.parse().with_context(|| format!("--tcp {t:?}: bad port"))?,
            )
        }
        (None, Some(path)) => {
            let toml = format!(
                "name = \"scan\"\npath = {:?}\nbaud = {}\nparity = {:?}\n",
                path.display().to_string(),
                a.baud,
                a.parity
            );
            Endpoint::Rtu(toml::from_str(&toml).with_context(|| "--rtu/--baud/--parity")?)
        }
        _ => bail!("give exactly one of --tcp HOST:PORT or --rtu PATH"),
    };
    let metrics = Arc::new(Metrics::default());
    let mut link = Link::new(endpoint, metrics);
    let data = link
        .read(a.unit, kind, a.start, a.count, Duration::from_millis(a.timeout_ms.clamp(1, 60_000)))
        .await
        .map_err(|f| anyhow!("unit {} {} {}+{}: {f}", a.unit, kind.name(), a.start, a.count))?;
    match data {
        Data::Bits(bits) => {
            let text: String = bits
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{:>5}  {}\n", usize::from(a.start) + i, u8::from(*b)))
                .collect();
            emit(&text)?;
        }
        Data::Registers(regs) => emit(&vigil_edge::sources::modbus::scan::render(a.start, &regs))?,
    }
    Ok(())
}

async fn opcua_browse(a: BrowseArgs) -> Result<()> {
    use std::fmt::Write as _;
    use vigil_edge::sources::opcua::{browse, config};
    let q = |s: &str| format!("{s:?}");
    // The same validation as the configuration file, so a browse that works means a device that works.
    let mut toml = format!(
        "name = \"browse\"\nendpoint = {}\nsecurity_policy = {}\nsecurity_mode = {}\ntimeout_ms = {}\ntrust_unknown_server = {}\n",
        q(&a.endpoint),
        q(&a.security_policy),
        q(&a.security_mode),
        a.timeout_ms,
        a.trust_unknown_server
    );
    if let Some(u) = &a.user {
        let pw = match &a.password {
            Some(p) => p.clone(),
            None => std::env::var("VIGIL_OPCUA_PASSWORD").context("--user needs --password or VIGIL_OPCUA_PASSWORD")?,
        };
        let _ = write!(toml, "user = {}\npassword = {}\n", q(u), q(&pw));
    }
    let _ = write!(toml, "[[points]]\nid = \"start\"\nnode = {}\n", q(&a.node));
    let cfg: config::OpcuaDeviceConfig =
        toml::from_str(&toml).map_err(|e| anyhow!("--security-policy/--security-mode: {}", e.message()))?;
    let pki = std::env::current_dir().context("working directory")?.join(&a.pki_dir);
    let here = pki.parent().unwrap_or(Path::new(".")).join("browse.toml");
    let mut cfg = cfg;
    cfg.pki_dir = Some(pki.clone());
    let (resolved, problems) = config::resolve(&here, "opcua", &cfg, 0, 0, 0, &Default::default(), "technician");
    if let Some((k, p)) = problems.first() {
        bail!("{}: {p}", k.replace("opcua.points[0].node", "--node").replace("opcua.", "--"));
    }
    let Some(r) = resolved else { bail!("invalid arguments") };
    let start = r.opcua.items[0].node.clone();
    let report = browse::browse(&r.opcua, &start, a.depth.min(32)).await.map_err(|e| anyhow!("{e}"))?;
    let mut o = String::new();
    let _ = writeln!(o, "endpoints: {}", report.endpoints.join(", "));
    for (i, u) in &report.namespaces {
        let _ = writeln!(o, "ns={i} {u}");
    }
    for l in &report.lines {
        let _ = writeln!(
            o,
            "{}{} [{}] {}{}",
            "  ".repeat(l.depth.saturating_sub(1) as usize),
            l.browse_name,
            l.class,
            l.node,
            l.value.as_ref().map(|v| format!(" = {v}")).unwrap_or_default()
        );
    }
    if report.truncated {
        let _ = writeln!(o, "(listing stopped at {} nodes; browse a deeper --node)", browse::MAX_NODES);
    }
    emit(&o)
}

fn proc_figures() -> (f64, u64) {
    // /proc/self/stat fields 14 and 15 are user and system time in USER_HZ (100 on Linux).
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / 100.0)
        })
        .unwrap_or(f64::NAN);
    let hwm = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

async fn acquire(plant: Plant, duration: Duration) -> Result<()> {
    let metrics = Arc::new(Metrics::default());
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let points = plant.points.len();
    let run = tokio::spawn(sources::run_acquisition(Arc::new(plant), tx, stop, metrics.clone()));
    let drain = tokio::spawn(async move {
        let mut n = 0u64;
        while rx.recv().await.is_some() {
            n += 1;
        }
        n
    });
    let (cpu0, _) = proc_figures();
    let started = std::time::Instant::now();
    tokio::select! {
        _ = tokio::time::sleep(duration) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = stop_tx.send(true);
    run.await.context("acquisition task")??;
    let records = drain.await.context("drain task")?;
    let (cpu1, hwm_kb) = proc_figures();
    let secs = started.elapsed().as_secs_f64();
    emit(&format!(
        "points={points} seconds={secs:.1} records={records} {metrics}\ncpu_seconds={:.2} cpu_percent_of_one_core={:.2} peak_rss_mb={:.1}\n",
        cpu1 - cpu0,
        100.0 * (cpu1 - cpu0) / secs,
        hwm_kb as f64 / 1024.0
    ))?;
    Ok(())
}

fn run(path: &Path) -> Result<()> {
    use vigil_edge::agent::Exit;
    use vigil_edge::config_push::roll_back_unloadable;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("tokio runtime")?;
    runtime.block_on(async {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).context("SIGTERM handler")?;
        // Each turn runs one configuration file; a pushed one (or its rollback) ends the turn.
        loop {
            // The pushed configuration, or the installed file (see `config_push` for which wins).
            let plant = match vigil_edge::config_push::load(path) {
                Ok(p) => Arc::new(p),
                Err(e) if roll_back_unloadable(path, &e.to_string())? => continue,
                Err(e) => bail!("{e}\nnothing was started"),
            };
            let mut agent = tokio::spawn(vigil_edge::agent::run(plant, shutdown.clone()));
            let finished = tokio::select! {
                finished = &mut agent => Some(finished.context("agent task")?),
                _ = tokio::signal::ctrl_c() => None,
                _ = term.recv() => None,
            };
            match finished {
                Some(Ok(Exit::Restart)) => continue,
                Some(Ok(Exit::Stopped)) => return Ok(()),
                Some(Err(e)) if roll_back_unloadable(path, &format!("{e:#}"))? => continue,
                Some(Err(e)) => return Err(e),
                None => {}
            }
            tracing::info!("stopping");
            let _ = stop.send(true);
            return agent.await.context("agent task")?.map(|_| ());
        }
    })
}
