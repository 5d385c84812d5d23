//! The `[notify]` section of the alarm definitions file: channels (webhook, or the logging SMS and
//! e-mail senders) and rules by grade, enterprise and role.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use crate::alarms::Grade;
use crate::api::Role;

/// What a channel does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelKind {
    /// POSTs the message as JSON to `url` (http or https).
    Webhook,
    /// Logging SMS sender: writes the SMS it would send to the log; nothing leaves central.
    SmsLog,
    /// Logging e-mail sender: writes the mail it would send to the log; nothing leaves central.
    EmailLog,
}

/// One notification channel.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelDef {
    /// Name rules refer to.
    pub name: String,
    /// Kind.
    pub kind: ChannelKind,
    /// Webhook URL (`http://` or `https://`).
    #[serde(default)]
    pub url: Option<String>,
    /// CA certificates (PEM) trusted for an https webhook; the system roots when absent.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Recipients (phone numbers, addresses) of the logging senders.
    #[serde(default)]
    pub to: Vec<String>,
}

/// When a rule sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    /// As soon as an alarm is announced (raised, re-activated, promoted, re-announced).
    Immediately,
    /// After `after_s` seconds if the alarm is still not acknowledged.
    Unacknowledged,
    /// Escalation: when the grade's pick-up deadline passes without acknowledgement.
    Supervision,
}

/// One rule: which alarms, when, to whom (role) and through which channels.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleDef {
    /// Name (recorded in the delivery log).
    pub name: String,
    /// When it sends.
    pub when: When,
    /// Grades it covers; all when empty.
    #[serde(default)]
    pub grades: Vec<Grade>,
    /// Enterprises it covers; all when empty.
    #[serde(default)]
    pub enterprises: Vec<String>,
    /// The role of the recipients (carried in the message so the receiving side routes it).
    #[serde(default)]
    pub role: Option<Role>,
    /// Channels to send through.
    pub channels: Vec<String>,
    /// `unacknowledged`: seconds after the announcement.
    #[serde(default)]
    pub after_s: f64,
    /// Seconds between repeats while unacknowledged.
    #[serde(default = "sixty")]
    pub every_s: f64,
    /// Most sends per alarm (1 = no repeat).
    #[serde(default = "one")]
    pub times: u32,
    /// `supervision`: the escalation level (1 = first deadline passed, 2 = the second...); beyond the
    /// highest configured level, the highest level is notified again.
    #[serde(default = "one")]
    pub level: u32,
}

fn sixty() -> f64 {
    60.0
}
fn one() -> u32 {
    1
}

/// Notification settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Attempts per message and channel before giving up.
    pub max_attempts: u32,
    /// First retry delay, ms (doubling up to `backoff_max_ms`).
    pub backoff_initial_ms: u64,
    /// Longest retry delay, ms.
    pub backoff_max_ms: u64,
    /// Timeout of one attempt, ms.
    pub timeout_ms: u64,
    /// Deliveries in flight at once; more wait.
    pub max_in_flight: usize,
    /// Channels.
    pub channel: Vec<ChannelDef>,
    /// Rules.
    pub rule: Vec<RuleDef>,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            max_attempts: 5,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            timeout_ms: 5_000,
            max_in_flight: 64,
            channel: Vec::new(),
            rule: Vec::new(),
        }
    }
}

impl NotifyConfig {
    /// Checks the section as a whole; an error is `(key path, problem)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: String, m: &str| Err((k, m.to_owned()));
        if self.max_attempts == 0 || self.max_attempts > 100 {
            return err("max_attempts".into(), "must be 1..=100");
        }
        if self.timeout_ms == 0 || self.backoff_initial_ms == 0 || self.backoff_max_ms < self.backoff_initial_ms {
            return err(
                "timeout_ms".into(),
                "timeout_ms and backoff_initial_ms must be > 0, backoff_max_ms >= backoff_initial_ms",
            );
        }
        if self.max_in_flight == 0 {
            return err("max_in_flight".into(), "must be > 0");
        }
        let mut names = HashSet::new();
        for (i, c) in self.channel.iter().enumerate() {
            let at = format!("channel[{i}] ({})", c.name);
            if c.name.trim().is_empty() || !names.insert(c.name.as_str()) {
                return err(at, "name must be non-empty and unique");
            }
            match (c.kind, &c.url) {
                (ChannelKind::Webhook, None) => return err(format!("{at}.url"), "a webhook needs a url"),
                (ChannelKind::Webhook, Some(u)) => {
                    let ok = u.parse::<hyper::Uri>().is_ok_and(|uri| {
                        matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
                    });
                    if !ok {
                        return err(format!("{at}.url"), "must be an absolute http:// or https:// URL");
                    }
                }
                (_, Some(_)) => return err(format!("{at}.url"), "only webhooks have a url"),
                (_, None) => {}
            }
        }
        for (i, r) in self.rule.iter().enumerate() {
            let at = format!("rule[{i}] ({})", r.name);
            if r.channels.is_empty() {
                return err(format!("{at}.channels"), "list at least one channel");
            }
            if let Some(c) = r.channels.iter().find(|c| !names.contains(c.as_str())) {
                return err(format!("{at}.channels"), &format!("no channel named {c:?}"));
            }
            if !r.after_s.is_finite() || r.after_s < 0.0 {
                return err(format!("{at}.after_s"), "must be a number >= 0");
            }
            if !r.every_s.is_finite() || r.every_s < 1.0 {
                return err(format!("{at}.every_s"), "must be a number >= 1");
            }
            if r.times == 0 || r.times > 1000 {
                return err(format!("{at}.times"), "must be 1..=1000");
            }
            if r.level == 0 {
                return err(format!("{at}.level"), "must be >= 1");
            }
        }
        Ok(())
    }
}
