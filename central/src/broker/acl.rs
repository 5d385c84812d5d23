//! Who may publish and subscribe where: a gateway only under its own id, central on every gateway's
//! `up/...` (subscribe) and `down/...` (publish). Also MQTT topic and filter syntax and matching.

use vigil_common::topic::PREFIX;
use vigil_common::{Channel, EnterpriseId, GatewayId, Topic};

/// A connected client's identity, from its certificate CN and central's gateway registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Central's own client (the configured CN).
    Central,
    /// A registered gateway.
    Gateway {
        /// Its enterprise (from the registry).
        enterprise: EnterpriseId,
        /// Its id (= certificate CN = MQTT client id).
        id: GatewayId,
    },
}

impl Identity {
    /// True when this client may publish on `topic` (a valid topic name).
    pub fn may_publish(&self, topic: &str) -> bool {
        match self {
            Identity::Central => {
                Topic::parse(topic).is_ok_and(|t| matches!(t.channel, Channel::DownAck | Channel::DownCmd))
            }
            Identity::Gateway { enterprise, id } => [Channel::UpBatch, Channel::UpState, Channel::UpCatalogue]
                .into_iter()
                .any(|c| Topic::new(enterprise.clone(), id.clone(), c).to_string() == topic),
        }
    }

    /// True when this client may subscribe to `filter` (a valid filter).
    pub fn may_subscribe(&self, filter: &str) -> bool {
        match self {
            // vigil/v1/{enterprise|+}/{gateway|+}/up/... : every gateway's uplink, never a downlink.
            Identity::Central => {
                let levels: Vec<&str> = filter.split('/').collect();
                levels.len() >= 5
                    && format!("{}/{}", levels[0], levels[1]) == PREFIX
                    && levels[2] != "#"
                    && levels[3] != "#"
                    && levels[4] == "up"
            }
            Identity::Gateway { enterprise, id } => [Channel::DownAck, Channel::DownCmd]
                .into_iter()
                .any(|c| Topic::new(enterprise.clone(), id.clone(), c).to_string() == filter),
        }
    }
}

/// A topic name a client may publish to: non-empty, no wildcards, no NUL.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty() && !topic.contains(['+', '#', '\0'])
}

/// A well-formed filter: `+` only as a whole level, `#` only as the whole last level.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.contains('\0') {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    levels.iter().enumerate().all(|(i, l)| match *l {
        "#" => i == last,
        "+" => true,
        l => !l.contains(['+', '#']),
    })
}

/// True when the topic name matches the (valid) filter, per MQTT 3.1.1 section 4.7.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut t = topic.split('/');
    for f in filter.split('/') {
        match (f, t.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (f, Some(l)) if f == l => {}
            _ => return false,
        }
    }
    t.next().is_none()
}

/// True when the filter has a wildcard (it cannot be looked up by exact topic).
pub fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn gw(ent: &str, id: &str) -> Identity {
        Identity::Gateway { enterprise: EnterpriseId::new(ent).unwrap(), id: GatewayId::new(id).unwrap() }
    }

    #[test]
    fn a_gateway_publishes_and_subscribes_only_under_its_own_id() {
        let g = gw("ent-a", "gw-1");
        assert!(g.may_publish("vigil/v1/ent-a/gw-1/up/batch"));
        assert!(g.may_publish("vigil/v1/ent-a/gw-1/up/state"));
        for t in [
            "vigil/v1/ent-a/gw-2/up/batch",
            "vigil/v1/ent-b/gw-1/up/batch",
            "vigil/v1/ent-a/gw-1/down/ack",
            "vigil/v1/ent-a/gw-1/down/cmd",
            "vigil/v1/ent-a/gw-1/up/other",
            "other",
        ] {
            assert!(!g.may_publish(t), "{t}");
        }
        assert!(g.may_subscribe("vigil/v1/ent-a/gw-1/down/ack"));
        assert!(g.may_subscribe("vigil/v1/ent-a/gw-1/down/cmd"));
        for f in [
            "vigil/v1/ent-a/gw-2/down/ack",
            "vigil/v1/ent-a/+/down/ack",
            "vigil/v1/ent-a/gw-1/up/batch",
            "vigil/v1/ent-a/gw-1/down/#",
            "#",
        ] {
            assert!(!g.may_subscribe(f), "{f}");
        }
    }

    #[test]
    fn central_reads_every_uplink_and_writes_every_downlink() {
        let c = Identity::Central;
        for f in ["vigil/v1/+/+/up/#", "vigil/v1/+/+/up/batch", "vigil/v1/+/+/up/state", "vigil/v1/ent-a/gw-1/up/+"] {
            assert!(c.may_subscribe(f), "{f}");
        }
        for f in ["#", "vigil/#", "vigil/v1/#", "vigil/v1/+/#", "vigil/v1/+/+/down/ack", "vigil/v1/+/+/+/batch"] {
            assert!(!c.may_subscribe(f), "{f}");
        }
        assert!(c.may_publish("vigil/v1/ent-a/gw-1/down/ack"));
        assert!(c.may_publish("vigil/v1/ent-a/gw-1/down/cmd"));
        assert!(!c.may_publish("vigil/v1/ent-a/gw-1/up/batch"));
        assert!(!c.may_publish("vigil/v1/ent-a/gw-1/up/state"));
    }

    #[test]
    fn filters_match_per_the_standard() {
        assert!(matches("vigil/v1/+/+/up/#", "vigil/v1/a/b/up/batch"));
        assert!(matches("a/#", "a"));
        assert!(matches("a/+", "a/"));
        assert!(!matches("a/+", "a/b/c"));
        assert!(!matches("a/b", "a/b/c"));
        assert!(!matches("#", "$SYS/x"));
        assert!(valid_filter("a/+/#") && !valid_filter("a/#/b") && !valid_filter("a/b+") && !valid_filter(""));
        assert!(valid_topic("a/b") && !valid_topic("a/+") && !valid_topic(""));
    }

    proptest! {
        #[test]
        fn a_concrete_topic_matches_itself_and_hash_only_where_allowed(levels in proptest::collection::vec("[a-z0-9-]{0,4}", 1..6)) {
            let topic = levels.join("/");
            prop_assert!(matches(&topic, &topic));
            prop_assert!(matches("#", &topic));
            let plus = vec!["+"; levels.len()].join("/");
            prop_assert!(matches(&plus, &topic));
        }

        #[test]
        fn garbage_filters_and_topics_never_panic(f in ".{0,40}", t in ".{0,40}") {
            let _ = valid_filter(&f);
            let _ = valid_topic(&t);
            let _ = matches(&f, &t);
            let _ = Identity::Central.may_subscribe(&f);
            let _ = Identity::Central.may_publish(&t);
        }
    }
}
