//! MQTT topic names: `vigil/v1/{enterprise}/{gateway}/{up/batch|up/state|up/catalogue|down/ack|down/cmd}`.

use std::fmt;

use crate::point::{EnterpriseId, GatewayId, IdError};

/// The first two topic levels.
pub const PREFIX: &str = "vigil/v1";

/// The channels between a gateway and central.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Gateway -> central: signed batches, QoS 1.
    UpBatch,
    /// Gateway -> central: retained birth/death state.
    UpState,
    /// Gateway -> central: retained point catalogue (devices and points of the running configuration).
    UpCatalogue,
    /// Central -> gateway: signed acknowledgements.
    DownAck,
    /// Central -> gateway: signed commands.
    DownCmd,
}

impl Channel {
    /// The last two topic levels.
    pub fn suffix(self) -> &'static str {
        match self {
            Channel::UpBatch => "up/batch",
            Channel::UpState => "up/state",
            Channel::UpCatalogue => "up/catalogue",
            Channel::DownAck => "down/ack",
            Channel::DownCmd => "down/cmd",
        }
    }

    /// The filter that matches this channel of every gateway (for central's subscriptions).
    pub fn filter_all(self) -> String {
        format!("{PREFIX}/+/+/{}", self.suffix())
    }
}

/// A parsed topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic {
    /// The enterprise level.
    pub enterprise: EnterpriseId,
    /// The gateway level.
    pub gateway: GatewayId,
    /// The channel.
    pub channel: Channel,
}

/// Why a topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not six levels starting with `vigil/v1`.
    #[error("topic {0:?} is not vigil/v1/<enterprise>/<gateway>/<up|down>/<channel>")]
    Shape(String),
    /// An unknown channel.
    #[error("topic {0:?} names no known channel (up/batch, up/state, up/catalogue, down/ack, down/cmd)")]
    Channel(String),
    /// An invalid enterprise or gateway level.
    #[error("topic {topic:?}: {source}")]
    Id {
        /// The topic.
        topic: String,
        /// What was wrong with the level.
        source: IdError,
    },
}

impl Topic {
    /// The topic of `channel` for one gateway.
    pub fn new(enterprise: EnterpriseId, gateway: GatewayId, channel: Channel) -> Topic {
        Topic { enterprise, gateway, channel }
    }

    /// Parses a concrete topic name; wildcards, empty levels and unknown channels are refused.
    pub fn parse(topic: &str) -> Result<Topic, TopicError> {
        let levels: Vec<&str> = topic.split('/').collect();
        let [vigil, v1, enterprise, gateway, dir, chan] = levels.as_slice() else {
            return Err(TopicError::Shape(topic.to_owned()));
        };
        if (*vigil, *v1) != ("vigil", "v1") {
            return Err(TopicError::Shape(topic.to_owned()));
        }
        let channel = match (*dir, *chan) {
            ("up", "batch") => Channel::UpBatch,
            ("up", "state") => Channel::UpState,
            ("up", "catalogue") => Channel::UpCatalogue,
            ("down", "ack") => Channel::DownAck,
            ("down", "cmd") => Channel::DownCmd,
            _ => return Err(TopicError::Channel(topic.to_owned())),
        };
        let id_err = |source| TopicError::Id { topic: topic.to_owned(), source };
        Ok(Topic {
            enterprise: EnterpriseId::new(*enterprise).map_err(id_err)?,
            gateway: GatewayId::new(*gateway).map_err(id_err)?,
            channel,
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}/{}/{}/{}", self.enterprise, self.gateway, self.channel.suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        for ch in [Channel::UpBatch, Channel::UpState, Channel::UpCatalogue, Channel::DownAck, Channel::DownCmd] {
            let t = Topic::new(EnterpriseId::new("ent-a").unwrap(), GatewayId::new("gw_01").unwrap(), ch);
            assert_eq!(Topic::parse(&t.to_string()).unwrap(), t);
        }
        assert_eq!(Channel::UpBatch.filter_all(), "vigil/v1/+/+/up/batch");
    }

    #[test]
    fn malformed_topics_are_refused() {
        for bad in [
            "",
            "vigil/v1/a/b/up",
            "vigil/v1/a/b/up/batch/extra",
            "vigil/v2/a/b/up/batch",
            "vigil/v1/+/b/up/batch",
            "vigil/v1/a/#/up/batch",
            "vigil/v1//b/up/batch",
            "vigil/v1/a/b/up/cmd",
            "vigil/v1/a/b/down/catalogue",
            "vigil/v1/a/b/side/batch",
            "/vigil/v1/a/b/up/batch",
        ] {
            assert!(Topic::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
