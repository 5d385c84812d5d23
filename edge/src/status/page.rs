//! The renderings of a [`Status`]: an HTML page with no external assets (a technician's laptop on
//! a plant network has no internet), a compact terminal summary, and Prometheus text.

use std::fmt::Write as _;

use super::{Board, Status};

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

fn age(now_ms: i64, ts_ms: Option<i64>) -> String {
    match ts_ms {
        None => "-".into(),
        Some(t) => {
            let s = (now_ms - t).max(0) / 1000;
            if s < 120 {
                format!("{s} s ago")
            } else if s < 7200 {
                format!("{} min ago", s / 60)
            } else {
                format!("{} h ago", s / 3600)
            }
        }
    }
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The HTML page; refreshes itself every 5 s.
pub fn render_html(s: &Status) -> String {
    let mut o = String::new();
    let _ = write!(
        o,
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
<meta name=\"viewport\" content=\"width=device-width\"><title>{gw} status</title><style>\
body{{font:14px/1.4 system-ui,sans-serif;margin:1em;color:#111}}table{{border-collapse:collapse;margin:.5em 0 1.5em}}\
td,th{{border:1px solid #bbb;padding:2px 8px;text-align:left}}th{{background:#eee}}.bad{{color:#b00;font-weight:bold}}\
.ok{{color:#070}}h2{{margin:.2em 0;font-size:1.1em}}</style></head><body>\
<h1>Gateway {gw}</h1><table><tr><th>agent</th><td>{ver} ({target})</td></tr><tr><th>uptime</th><td>{up} s</td></tr>\
<tr><th>uplink</th><td class=\"{ucls}\">{uplink}</td></tr><tr><th>clock</th><td>{clock}</td></tr>\
<tr><th>update on trial</th><td>{trial}</td></tr><tr><th>configuration</th><td>{config}</td></tr></table>",
        gw = esc(&s.gateway),
        ver = esc(&s.version),
        target = esc(&s.target),
        up = s.uptime_s,
        ucls = if s.uplink == "connected" { "ok" } else { "bad" },
        uplink = esc(&s.uplink),
        clock = esc(&s.clock),
        trial = esc(s.update_trial.as_deref().unwrap_or("none")),
        config = esc(&s.config),
    );
    let _ = write!(
        o,
        "<h2>Spool (epoch {})</h2><table><tr><th>class</th><th>batches</th><th>bytes</th><th>oldest unacknowledged</th><th>dropped</th></tr>",
        s.spool_epoch
    );
    for c in &s.spool {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td></tr>",
            esc(&c.class),
            c.batches,
            c.bytes,
            c.oldest_unacked_s.map_or("-".into(), |a| format!("{a:.0} s")),
            if c.dropped_batches > 0 { "bad" } else { "" },
            c.dropped_batches
        );
    }
    o.push_str("</table><h2>Devices and sources</h2><table><tr><th>name</th><th>kind</th><th>state</th><th>since</th><th>last error</th></tr>");
    for d in &s.devices {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.name),
            esc(&d.kind),
            match d.state.as_str() {
                "online" => "ok",
                "offline" => "bad",
                _ => "",
            },
            esc(&d.state),
            age(s.now_ms, d.since_ms),
            esc(d.last_error.as_deref().unwrap_or(""))
        );
    }
    o.push_str(
        "</table><h2>Points</h2><table><tr><th>point</th><th>value</th><th>unit</th><th>quality</th><th>read</th></tr>",
    );
    for p in &s.points {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"{}\">{}</td><td>{}</td></tr>",
            esc(&p.id),
            esc(&value_text(&p.value)),
            esc(&p.unit),
            if p.good { "ok" } else { "bad" },
            esc(&p.quality),
            age(s.now_ms, p.ts_ms)
        );
    }
    o.push_str("</table><h2>Recent events (newest first)</h2><table><tr><th>when</th><th>event</th></tr>");
    for e in s.events.iter().rev() {
        let _ = write!(o, "<tr><td>{}</td><td>{}</td></tr>", age(s.now_ms, Some(e.ts_ms)), esc(&e.text));
    }
    o.push_str("</table><p>Also as <a href=\"/status.json\">JSON</a> and <a href=\"/metrics\">Prometheus metrics</a>.</p></body></html>\n");
    o
}

/// A compact summary for the terminal (`vigil-edge status`).
pub fn summary_text(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "gateway {}  agent {} ({})  up {} s", s.gateway, s.version, s.target, s.uptime_s);
    let _ = writeln!(o, "uplink  {}", s.uplink);
    let _ = writeln!(o, "clock   {}", s.clock);
    if !s.config.is_empty() {
        let _ = writeln!(o, "config  {}", s.config);
    }
    if let Some(t) = &s.update_trial {
        let _ = writeln!(o, "update  on trial: {t}");
    }
    let _ = write!(o, "spool   epoch {}:", s.spool_epoch);
    for c in &s.spool {
        let _ = write!(
            o,
            " {} {} ({} B, oldest {}, dropped {})",
            c.class,
            c.batches,
            c.bytes,
            c.oldest_unacked_s.map_or("-".into(), |a| format!("{a:.0} s")),
            c.dropped_batches
        );
    }
    o.push('\n');
    let _ = writeln!(o, "devices ({}):", s.devices.len());
    for d in &s.devices {
        let _ = writeln!(
            o,
            "  {:<24} {:<7} {:<8} {}",
            d.name,
            d.kind,
            d.state,
            d.last_error.as_deref().map(|e| format!("last error: {e}")).unwrap_or_default()
        );
    }
    let _ = writeln!(o, "points ({}):", s.points.len());
    for p in &s.points {
        let _ = writeln!(
            o,
            "  {:<32} {:>14} {:<6} {:<12} {}",
            p.id,
            value_text(&p.value),
            p.unit,
            if p.good { "good".to_owned() } else { p.quality.clone() },
            age(s.now_ms, p.ts_ms)
        );
    }
    let _ = writeln!(o, "recent events:");
    for e in s.events.iter().rev().take(10) {
        let _ = writeln!(o, "  {:>12}  {}", age(s.now_ms, Some(e.ts_ms)), e.text);
    }
    o
}

/// Prometheus text exposition (format 0.0.4) of the agent's counters.
pub fn metrics_text(board: &Board, status: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# HELP vigil_edge_info agent version and target\n# TYPE vigil_edge_info gauge");
    let _ = writeln!(
        o,
        "vigil_edge_info{{version=\"{}\",target=\"{}\",gateway=\"{}\"}} 1",
        prom_label(&status.version),
        prom_label(&status.target),
        prom_label(&status.gateway)
    );
    // The exposition format wants every sample of a family together, after its HELP and TYPE.
    type Family<'a> = (&'a str, Vec<(String, f64)>);
    let mut families: std::collections::BTreeMap<String, Family<'_>> = Default::default();
    for (name, help, value) in board.counters() {
        let base = name.split('{').next().unwrap_or(&name).to_owned();
        families.entry(base).or_insert((help, Vec::new())).1.push((name, value));
    }
    for (base, (help, samples)) in families {
        let kind = if base.ends_with("_total") { "counter" } else { "gauge" };
        let _ = writeln!(o, "# HELP {base} {help}\n# TYPE {base} {kind}");
        for (name, value) in samples {
            let _ = writeln!(o, "{name} {value}");
        }
    }
    o
}

fn prom_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
