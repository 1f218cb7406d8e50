//! The request bodies ingest takes (danmaku, single and batched events) and
//! the answer it gives. Parsing happens in the HTTP layer; validation in
//! [`super::validate`].

use serde::Deserialize;

use crate::message::{Gift, Kind, Priority, Style, UserRef};

/// `POST /v1/rooms/{room}/danmaku` body (and the WebSocket `send` message).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct DanmakuRequest {
    pub client_msg_id: String,
    pub text: String,
    #[serde(default)]
    pub style: Option<Style>,
}

/// Declares the event fields once for both event bodies: the single event
/// ([`EventRequest`], whose key is the `Idempotency-Key` header) and the
/// batched one ([`BatchEvent`], which carries its key as a field). Both
/// refuse unknown fields, so each names exactly its own fields in errors.
macro_rules! event_bodies {
    ($($(#[$attr:meta])* $field:ident: $ty:ty,)+) => {
        /// `POST /v1/rooms/{room}/events` body from the gift backend.
        #[derive(Deserialize, Debug, Clone)]
        #[serde(deny_unknown_fields)]
        pub struct EventRequest {
            $($(#[$attr])* pub $field: $ty,)+
        }

        /// One event of `POST /v1/rooms/{room}/events:batch`: the
        /// single-event body plus the event's own idempotency key.
        #[derive(Deserialize, Debug, Clone)]
        #[serde(deny_unknown_fields)]
        pub struct BatchEvent {
            pub idempotency_key: String,
            $($(#[$attr])* pub $field: $ty,)+
        }

        impl BatchEvent {
            /// The event's key and its single-event body.
            pub fn into_parts(self) -> (String, EventRequest) {
                (
                    self.idempotency_key,
                    EventRequest {
                        $($field: self.$field,)+
                    },
                )
            }
        }
    };
}

event_bodies! {
    kind: Kind,
    user: UserRef,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    gift: Option<Gift>,
    #[serde(default)]
    priority: Option<Priority>,
}

/// A parsed batch event, ready for [`super::Ingest::events`].
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub idempotency_key: String,
    /// What the idempotency fingerprint is taken over (the event's canonical JSON).
    pub fingerprint_source: Vec<u8>,
    pub req: EventRequest,
}

/// An acknowledged request: the JSON answer (the same on every retry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub body: String,
    /// This answer was recorded by an earlier request with the same key.
    pub replayed: bool,
}
