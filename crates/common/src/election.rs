//! Leader election under `/rankmesh/election/<role>` with fenced writes.
//!
//! A candidate grants a lease, keeps it alive, and campaigns through etcd's election
//! API. `campaign` blocks by design until this candidate leads, so it has no timeout;
//! it is retried on errors (etcd down, member lost). Leadership ends when the lease
//! cannot be refreshed within its TTL or the leader key disappears; [`Leadership::lost`]
//! resolves then. Every write a leader makes goes through [`Leadership::fenced_txn`],
//! which only applies while the leader key still has the create revision it had when
//! this candidate won, so a deposed leader that has not noticed yet cannot write.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, EventType, LeaderKey, Txn, TxnOp, WatchOptions};
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::discovery::Backoff;
use crate::etcd::{Etcd, EtcdError};

/// Root of the election keyspace.
pub const ELECTION_PREFIX: &str = "/rankmesh/election/";

/// The election name for a role, e.g. `rollout` or `registry-gc`.
pub fn election_name(role: &str) -> String {
    format!("{ELECTION_PREFIX}{role}")
}

#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    #[error("not the leader any more: the leader key changed or expired")]
    NotLeader,
}

impl From<etcd_client::Error> for ElectionError {
    fn from(e: etcd_client::Error) -> Self {
        Self::Etcd(EtcdError::Client(e))
    }
}

/// One candidate for one role.
#[derive(Debug, Clone)]
pub struct Candidate {
    etcd: Etcd,
    role: String,
    /// Published as the leader key's value so others can see who leads.
    identity: String,
}

impl Candidate {
    pub fn new(etcd: Etcd, role: &str, identity: &str) -> Self {
        Self {
            etcd,
            role: role.to_owned(),
            identity: identity.to_owned(),
        }
    }

    /// Campaigns until this candidate leads; retries every error with backoff.
    pub async fn campaign(&self) -> Leadership {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            match self.try_campaign().await {
                Ok(l) => return l,
                Err(e) => {
                    tracing::warn!(role = %self.role, error = %e, "campaign failed; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
        }
    }

    async fn try_campaign(&self) -> Result<Leadership, ElectionError> {
        let ttl = self.etcd.config().lease_ttl();
        let ttl_s = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(2);
        let mut client = self.etcd.client();
        let lease = self.etcd.timed(client.lease_grant(ttl_s, None)).await?.id();

        // The lease must stay alive while we wait in the campaign; if it cannot be
        // kept alive, our candidacy is void and the campaign is restarted.
        let (lost_tx, mut lost_rx) = watch::channel(false);
        let lost_tx = std::sync::Arc::new(lost_tx);
        let etcd = self.etcd.clone();
        let tx = std::sync::Arc::clone(&lost_tx);
        let keeper = tokio::spawn(async move {
            let r = crate::discovery::keep_alive(&etcd, lease, ttl).await;
            tracing::debug!(lease, result = ?r, "election lease keep-alive ended");
            tx.send_replace(true);
        });
        let keeper = AbortOnDrop(Some(keeper));

        let name = election_name(&self.role);
        let won = tokio::select! {
            r = client.campaign(name.as_str(), self.identity.as_str(), lease) => r,
            () = until_true(&mut lost_rx) => {
                return Err(EtcdError::Timeout(ttl).into());
            }
        };
        let won = match won {
            Ok(w) => w,
            Err(e) => {
                // Give the lease back so our stale candidacy key goes away now.
                let _ = self.etcd.timed(client.lease_revoke(lease)).await;
                return Err(e.into());
            }
        };
        let key = won.leader().cloned().ok_or_else(|| {
            etcd_client::Error::ElectError("campaign returned no leader key".into())
        })?;

        // Also treat deletion of our key (revoked lease, operator action) as loss.
        let watch_lost = {
            let etcd = self.etcd.clone();
            let key_bytes = key.key().to_vec();
            let mut rx = lost_rx.clone();
            let tx = std::sync::Arc::clone(&lost_tx);
            tokio::spawn(async move {
                let mut client = etcd.client();
                let Ok(mut events) = etcd
                    .timed(client.watch(key_bytes, Some(WatchOptions::new())))
                    .await
                else {
                    return;
                };
                loop {
                    tokio::select! {
                        ev = events.next() => match ev {
                            Some(Ok(r)) if r.events().iter().any(|e| e.event_type() == EventType::Delete) => break,
                            Some(Ok(_)) => continue,
                            // A broken watch is not proof of loss; the lease keeper decides.
                            _ => futures::future::pending::<()>().await,
                        },
                        () = until_true(&mut rx) => return,
                    }
                }
                tracing::warn!("leader key deleted");
                tx.send_replace(true);
            })
        };

        metrics::gauge!("rankmesh_leader", "role" => self.role.clone()).set(1.0);
        tracing::info!(role = %self.role, identity = %self.identity, rev = key.rev(), "became leader");
        Ok(Leadership {
            etcd: self.etcd.clone(),
            role: self.role.clone(),
            key,
            lease,
            lost: lost_rx,
            _keeper: keeper,
            _key_watch: AbortOnDrop(Some(watch_lost)),
        })
    }

    /// The identity of the current leader, if any.
    pub async fn leader(&self) -> Result<Option<String>, ElectionError> {
        let mut client = self.etcd.client();
        match self
            .etcd
            .timed(client.leader(election_name(&self.role)))
            .await
        {
            Ok(r) => Ok(r
                .kv()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())),
            // etcd answers "election: no leader" as an error.
            Err(EtcdError::Client(etcd_client::Error::GRpcStatus(s)))
                if s.message().contains("no leader") =>
            {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }
}

#[derive(Debug)]
struct AbortOnDrop(Option<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Held while this candidate leads. Dropping it stops refreshing the lease (another
/// candidate takes over after the TTL); [`Leadership::resign`] hands over at once.
#[derive(Debug)]
pub struct Leadership {
    etcd: Etcd,
    role: String,
    key: LeaderKey,
    lease: i64,
    /// Becomes true once the lease could not be refreshed within its TTL.
    lost: watch::Receiver<bool>,
    _keeper: AbortOnDrop,
    _key_watch: AbortOnDrop,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        metrics::gauge!("rankmesh_leader", "role" => self.role.clone()).set(0.0);
    }
}

impl Leadership {
    /// The leader key's create revision: the fencing token.
    pub fn revision(&self) -> i64 {
        self.key.rev()
    }

    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// Resolves once leadership is lost (lease expired or unreachable for a TTL, or
    /// the leader key was deleted).
    pub async fn lost(&self) {
        until_true(&mut self.lost.clone()).await;
    }

    /// True when loss has already been observed (cheap, no etcd call).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Applies `ops` only if this candidate still leads; returns
    /// [`ElectionError::NotLeader`] otherwise, having changed nothing.
    pub async fn fenced_txn(
        &self,
        ops: Vec<TxnOp>,
    ) -> Result<etcd_client::TxnResponse, ElectionError> {
        self.fence().txn(ops).await
    }

    /// The fencing token as a value, for work that outlives a borrow of this
    /// leadership (a leader's background task).
    pub fn fence(&self) -> Fence {
        Fence {
            etcd: self.etcd.clone(),
            key: self.key.key().to_vec(),
            revision: self.key.rev(),
        }
    }

    /// A fenced single put.
    pub async fn fenced_put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<(), ElectionError> {
        self.fenced_txn(vec![TxnOp::put(key, value, None)])
            .await
            .map(|_| ())
    }

    /// Steps down now: revokes the lease, so the next candidate wins at once.
    pub async fn resign(self) -> Result<(), ElectionError> {
        let mut client = self.etcd.client();
        self.etcd.timed(client.lease_revoke(self.lease)).await?;
        Ok(())
    }
}

/// A leader's fencing token: writes through it apply only while the leader key still
/// has the create revision it had when this candidate won.
#[derive(Debug, Clone)]
pub struct Fence {
    etcd: Etcd,
    key: Vec<u8>,
    revision: i64,
}

impl Fence {
    fn leads(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.revision)
    }

    /// Applies `ops` only while leading; [`ElectionError::NotLeader`] otherwise,
    /// having changed nothing.
    pub async fn txn(&self, ops: Vec<TxnOp>) -> Result<etcd_client::TxnResponse, ElectionError> {
        let mut client = self.etcd.client();
        let txn = Txn::new().when([self.leads()]).and_then(ops);
        let resp = self.etcd.timed(client.txn(txn)).await?;
        if resp.succeeded() {
            Ok(resp)
        } else {
            Err(ElectionError::NotLeader)
        }
    }

    /// Applies `ops` only while leading and while every one of `conditions` holds:
    /// `Ok(true)` when applied, `Ok(false)` (nothing changed) when a condition failed
    /// while still leading, [`ElectionError::NotLeader`] when leadership is gone.
    pub async fn txn_if(
        &self,
        conditions: Vec<Compare>,
        ops: Vec<TxnOp>,
    ) -> Result<bool, ElectionError> {
        let mut client = self.etcd.client();
        let mut when = vec![self.leads()];
        when.extend(conditions);
        let txn = Txn::new().when(when).and_then(ops);
        if self.etcd.timed(client.txn(txn)).await?.succeeded() {
            return Ok(true);
        }
        self.check().await.map(|()| false)
    }

    /// Ok while this candidate still leads (one etcd round trip), for side effects
    /// outside etcd that cannot join a transaction: check right before each.
    pub async fn check(&self) -> Result<(), ElectionError> {
        self.txn(Vec::new()).await.map(drop)
    }
}

/// Runs `work` whenever this candidate leads, until `stop` becomes true: campaign,
/// run until the work ends or leadership is lost (the work future is then dropped),
/// campaign again. `leading` reports the current state for metrics and tests. On
/// stop while leading, resigns so the next candidate takes over at once; on stop
/// while campaigning, the candidacy lease simply expires after its TTL.
pub async fn lead_forever<F, Fut>(
    candidate: Candidate,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
    mut work: F,
) where
    F: FnMut(&Leadership) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    loop {
        let leadership = tokio::select! {
            l = candidate.campaign() => l,
            () = until_true(&mut stop) => return,
        };
        leading.send_replace(true);
        let stopping = {
            let fut = work(&leadership);
            tokio::pin!(fut);
            tokio::select! {
                () = &mut fut => false,
                () = leadership.lost() => {
                    tracing::warn!(role = %candidate.role, "leadership lost");
                    false
                }
                () = until_true(&mut stop) => true,
            }
        };
        leading.send_replace(false);
        if !leadership.is_lost() {
            // The work finished or we are stopping: hand over cleanly.
            if let Err(e) = leadership.resign().await {
                tracing::warn!(error = %e, "resign failed; the lease will expire");
            }
        }
        if stopping {
            return;
        }
    }
}

/// Waits until the flag is set. A closed channel (both watchers gone, which only
/// happens on drop) counts as set.
async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await.map(|_| ());
}
