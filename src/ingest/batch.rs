//! `events:batch`: many signed events in one request. Items are validated
//! and their keys claimed one by one; the accepted ones go to the bus in one
//! publish. A key seen twice in one batch is one event: the second gets the
//! first's answer (or `idempotency_key_reused` if its body differs).

use std::collections::HashMap;

use super::idempotency::{key_reused, Claimed, IdemKey};
use super::{answer_body, publish_error, Accepted, BatchItem, Ingest};
use crate::error::ApiError;
use crate::message::{Kind, Message};

type Outcome = Result<Accepted, ApiError>;

/// An event whose key is to be claimed and whose message published.
struct Pending {
    index: usize,
    key: IdemKey,
    message: Message,
}

/// The batch's results as they are decided, in item order.
struct Results {
    outcomes: Vec<Option<Outcome>>,
    /// The kind of each well-formed item (for the metrics).
    kinds: Vec<Option<Kind>>,
    /// `(item, earlier item with the same key and body)`.
    copies: Vec<(usize, usize)>,
}

impl Results {
    fn new(n: usize) -> Self {
        Results {
            outcomes: vec![None; n],
            kinds: vec![None; n],
            copies: Vec::new(),
        }
    }

    fn decide(&mut self, index: usize, outcome: Outcome) {
        self.outcomes[index] = Some(outcome);
    }

    /// A repeated key gets its first item's answer, as a replay.
    fn copy_repeats(&mut self) {
        for (i, first) in std::mem::take(&mut self.copies) {
            let outcome = match self.outcomes[first].clone().expect("first of key decided") {
                Ok(a) => Ok(Accepted {
                    replayed: true,
                    ..a
                }),
                Err(e) => Err(e),
            };
            self.decide(i, outcome);
        }
    }
}

impl Ingest {
    /// A signed batch of events (signature already verified by the caller):
    /// one result per item, in order (see the module documentation).
    pub async fn events(
        &self,
        room: &str,
        items: Vec<Result<BatchItem, ApiError>>,
    ) -> Vec<Result<Accepted, ApiError>> {
        let mut results = Results::new(items.len());
        let pending = self.sort_items(room, items, &mut results);
        let pending = self.shed_items(pending, &mut results).await;
        let won = self.claim_all(pending, &mut results).await;
        if !won.is_empty() {
            self.publish_all(won, &mut results).await;
        }
        results.copy_repeats();
        self.account_all(results)
    }

    /// Validates every item: refused ones are decided, repeats of a key are
    /// noted, the rest are returned to be claimed.
    fn sort_items(
        &self,
        room: &str,
        items: Vec<Result<BatchItem, ApiError>>,
        results: &mut Results,
    ) -> Vec<Pending> {
        let mut first_of_key: HashMap<String, (usize, IdemKey)> = HashMap::new();
        let mut pending = Vec::new();
        for (i, item) in items.into_iter().enumerate() {
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    results.decide(i, Err(e));
                    continue;
                }
            };
            results.kinds[i] = Some(item.req.kind);
            let key = self.event_key(room, &item.idempotency_key, &item.fingerprint_source);
            if let Some((first, first_key)) = first_of_key.get(&item.idempotency_key) {
                if first_key.same_request(&key) {
                    results.copies.push((i, *first));
                } else {
                    results.decide(i, Err(key_reused()));
                }
                continue;
            }
            first_of_key.insert(item.idempotency_key.clone(), (i, key.clone()));
            match self.event_message(room, &item.idempotency_key, item.req) {
                Ok(message) => pending.push(Pending {
                    index: i,
                    key,
                    message,
                }),
                Err(e) => results.decide(i, Err(e)),
            }
        }
        pending
    }

    /// Refuses the items that shedding refuses (before any key is claimed).
    async fn shed_items(&self, pending: Vec<Pending>, results: &mut Results) -> Vec<Pending> {
        let mut kept = Vec::with_capacity(pending.len());
        for p in pending {
            match self.check_shedding(&p.message).await {
                Ok(()) => kept.push(p),
                Err(e) => results.decide(p.index, Err(e)),
            }
        }
        kept
    }

    /// Claims every key at once; returns the events to publish (with the
    /// message id of an earlier failed attempt where there was one).
    async fn claim_all(&self, pending: Vec<Pending>, results: &mut Results) -> Vec<Pending> {
        let claims = futures_util::future::join_all(
            pending
                .iter()
                .map(|p| self.idempotency.claim(&p.key, &p.message.id)),
        )
        .await;
        let mut won = Vec::new();
        for (mut p, claim) in pending.into_iter().zip(claims) {
            match claim {
                Ok(Claimed::Go(earlier_id)) => {
                    if let Some(id) = earlier_id {
                        p.message.id = id;
                    }
                    won.push(p);
                }
                Ok(Claimed::Answer(answer)) => results.decide(p.index, Ok(answer)),
                Err(e) => results.decide(p.index, Err(e)),
            }
        }
        won
    }

    /// One publish for every won event, then the answers recorded (or the
    /// keys marked for a retry with the same ids).
    async fn publish_all(&self, won: Vec<Pending>, results: &mut Results) {
        let partitions = self.bus.partitions();
        let mut records = Vec::with_capacity(won.len());
        let mut bodies = Vec::with_capacity(won.len());
        for p in &won {
            bodies.push(answer_body(&p.message));
            records.push(self.gears.record(p.message.clone(), partitions).await);
        }
        match self.bus.publish(records).await {
            Ok(()) => {
                futures_util::future::join_all(
                    won.iter()
                        .zip(&bodies)
                        .map(|(p, body)| self.idempotency.record_answer(&p.key, body)),
                )
                .await;
                for (p, body) in won.iter().zip(bodies) {
                    let accepted = Accepted {
                        body,
                        replayed: false,
                    };
                    results.decide(p.index, Ok(accepted));
                }
            }
            Err(e) => {
                // Not acknowledged: a retry goes through, with the same ids.
                futures_util::future::join_all(
                    won.iter()
                        .map(|p| self.idempotency.mark_for_retry(&p.key, &p.message.id)),
                )
                .await;
                let e = publish_error(e);
                for p in &won {
                    results.decide(p.index, Err(e.clone()));
                }
            }
        }
    }

    /// Counts every outcome in the metrics and returns them in order.
    fn account_all(&self, results: Results) -> Vec<Outcome> {
        results
            .outcomes
            .into_iter()
            .zip(results.kinds)
            .map(|(outcome, kind)| {
                let outcome = outcome.expect("every item decided");
                match kind {
                    Some(kind) => self.account(kind, &outcome),
                    None => {
                        if let Err(e) = &outcome {
                            self.metrics.reject(e.code);
                        }
                    }
                }
                outcome
            })
            .collect()
    }
}
