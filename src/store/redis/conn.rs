//! The live store's Redis topology, chosen by `store.redis_url`: one
//! `redis://host:port[/db]` is a single Redis (or a primary), several
//! comma-separated `redis://host:port` nodes are a Redis Cluster
//! (`docs/redis-keys.md`, "Cluster"). [`RedisConn`] is one connection type
//! for both, so every call site issues its commands, pipelines and scripts
//! the same way; the cluster client routes each by its first key's slot
//! (every room's keys share the `{room}` tag, see `docs/redis-keys.md`).

use std::time::Duration;

use ::redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::{ClusterClient, ClusterClientBuilder};
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Client, Cmd, Pipeline, RedisFuture, Value};

use crate::store::StoreError;

/// Bound on opening a connection to one node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the live store is: parsed from `store.redis_url`.
pub(super) enum Topology {
    /// One Redis server.
    Single(Client),
    /// A Redis Cluster, from its seed nodes (in the order listed).
    Cluster {
        /// Boxed: it is much larger than a `Client`.
        client: Box<ClusterClient>,
        /// One client per listed node: notices subscribe through one of
        /// them (`notices.rs`), moving on to the next when it fails.
        nodes: Vec<Client>,
    },
}

impl Topology {
    /// Parses `url`: a comma between URLs means a cluster. The error names
    /// what is wrong, never the URL (it may hold a password).
    pub(super) fn parse(url: &str) -> Result<Topology, StoreError> {
        let parts = node_urls(url);
        let bad = |e: ::redis::RedisError| StoreError::Unavailable(format!("bad redis url: {e}"));
        match parts.as_slice() {
            [] => Err(StoreError::Unavailable("bad redis url: empty".into())),
            [one] => Ok(Topology::Single(Client::open(*one).map_err(bad)?)),
            many => {
                let nodes = many
                    .iter()
                    .map(|u| Client::open(*u))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                let client = ClusterClientBuilder::new(many.to_vec())
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .retries(3)
                    .min_retry_wait(50)
                    .max_retry_wait(500)
                    .build()
                    .map_err(bad)?;
                Ok(Topology::Cluster {
                    client: Box::new(client),
                    nodes,
                })
            }
        }
    }

    /// The clients notices may subscribe through, in the order to try them.
    pub(super) fn pubsub_nodes(&self) -> Vec<Client> {
        match self {
            Topology::Single(client) => vec![client.clone()],
            Topology::Cluster { nodes, .. } => nodes.clone(),
        }
    }

    /// Connects. Fails if Redis (every listed cluster node) cannot be
    /// reached now; later outages are survived by reconnecting.
    pub(super) async fn connect(&self) -> Result<RedisConn, ::redis::RedisError> {
        match self {
            Topology::Single(client) => {
                let manager =
                    ConnectionManager::new_with_config(client.clone(), manager_config()).await?;
                Ok(RedisConn::Single(manager))
            }
            Topology::Cluster { client, .. } => {
                Ok(RedisConn::Cluster(client.get_async_connection().await?))
            }
        }
    }
}

/// How a single Redis (or a Sentinel's primary) is connected to: bounded
/// connects and answers, a few quick retries, then `Unavailable`.
pub(super) fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT))
        .set_number_of_retries(2)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(500))
}

/// The non-empty, trimmed URLs of a comma-separated list.
fn node_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// A connection to either topology; both reconnect by themselves (the
/// cluster one per node, following `MOVED` and slot-map changes). Cheap to
/// clone: clones share the underlying connections.
#[derive(Clone)]
pub(super) enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// `PING` on this connection. Only the single-server connections are
    /// asked this way: a cluster's readiness is any listed node answering
    /// on a connection of its own (`health.rs`, `any_node_answers`),
    /// because the cluster client's `PING` of all masters stalled at times
    /// while one master was frozen.
    pub(super) async fn ping(&mut self) -> Result<String, ::redis::RedisError> {
        ::redis::cmd("PING").query_async(self).await
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which topology a `store.redis_url` selects.
    #[test]
    fn topology_by_url() {
        let cases: &[(&str, Option<usize>)] = &[
            // (url, Some(pub/sub nodes: 1 = single, n = cluster) / None = error)
            ("redis://127.0.0.1:6379/0", Some(1)),
            ("redis://127.0.0.1:6379", Some(1)),
            (" redis://127.0.0.1:6379 ,", Some(1)),
            ("redis://a:1,redis://b:2,redis://c:3", Some(3)),
            ("redis://a:1, redis://b:2", Some(2)),
            ("redis://:pw@a:1,redis://:pw@b:2", Some(2)),
            ("", None),
            (" , ", None),
            ("not a url", None),
            ("redis://a:1,not a url", None),
            ("http://a:1,redis://b:2", None),
        ];
        for (url, want) in cases {
            let got = Topology::parse(url).ok().map(|t| {
                let n = t.pubsub_nodes().len();
                assert_eq!(matches!(t, Topology::Cluster { .. }), n > 1, "{url:?}");
                n
            });
            assert_eq!(got, *want, "{url:?}");
        }
    }

    /// A bad URL's error never repeats it (it may hold a password).
    #[test]
    fn errors_do_not_echo_the_url() {
        for url in ["redis://:secret@a:1,nonsense-secret", "secret://x"] {
            let Err(StoreError::Unavailable(e)) = Topology::parse(url) else {
                panic!("{url:?} parsed");
            };
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
