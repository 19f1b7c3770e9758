//! Webhook endpoints and their deliveries, and each space's analytics.
//!
//! A delivery is one event for one endpoint: written when the event
//! happens (before any attempt), updated after each attempt, so a restart
//! resumes every delivery not yet acknowledged. `(endpoint, event id)` is
//! unique: an event raised twice (a replay cut again after a restart) is
//! delivered once.

use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS webhooks (
    id         TEXT PRIMARY KEY,
    url        TEXT NOT NULL,
    secret     TEXT NOT NULL,
    events     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    body         TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_at      INTEGER NOT NULL,
    state        TEXT NOT NULL,
    last_status  INTEGER,
    last_error   TEXT,
    done_at      INTEGER,
    UNIQUE (endpoint, event_id)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries(state, next_at);
CREATE INDEX IF NOT EXISTS webhook_deliveries_endpoint ON webhook_deliveries(endpoint, state, next_at);
CREATE TABLE IF NOT EXISTS reminders (
    space      TEXT NOT NULL,
    pid        TEXT NOT NULL,
    name       TEXT NOT NULL,
    contact    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (space, pid)
);
CREATE TABLE IF NOT EXISTS space_stats (
    id         TEXT PRIMARY KEY,
    body       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
";

/// A webhook endpoint the admin configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub id: String,
    pub url: String,
    /// `whsec_<base64>` (Standard Webhooks).
    pub secret: String,
    /// Event types sent to it; empty means all.
    pub events: Vec<String>,
    pub created_at_ms: i64,
}

impl Endpoint {
    /// Whether events of type `kind` go to this endpoint.
    pub fn wants(&self, kind: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == kind)
    }
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not acknowledged yet: attempted at `next_at`.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up after the retry window.
    Failed,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> DeliveryState {
        match s {
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            _ => DeliveryState::Pending,
        }
    }
}

/// One event for one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: i64,
    pub endpoint: String,
    pub event_id: String,
    pub event_type: String,
    pub body: String,
    pub created_at_ms: i64,
    pub attempts: u32,
    pub next_at_ms: i64,
    pub state: DeliveryState,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub done_at_ms: Option<i64>,
}

/// What one attempt gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered {
        status: u16,
    },
    /// Try again at `next_at_ms`.
    Retry {
        status: Option<u16>,
        error: String,
        next_at_ms: i64,
    },
    GaveUp {
        status: Option<u16>,
        error: String,
    },
}

const DELIVERY_COLUMNS: &str = "id, endpoint, event_id, event_type, body, created_at, attempts, \
     next_at, state, last_status, last_error, done_at";

fn delivery(r: &rusqlite::Row<'_>) -> rusqlite::Result<Delivery> {
    Ok(Delivery {
        id: r.get(0)?,
        endpoint: r.get(1)?,
        event_id: r.get(2)?,
        event_type: r.get(3)?,
        body: r.get(4)?,
        created_at_ms: r.get(5)?,
        attempts: r.get(6)?,
        next_at_ms: r.get(7)?,
        state: DeliveryState::parse(&r.get::<_, String>(8)?),
        last_status: r.get(9)?,
        last_error: r.get(10)?,
        done_at_ms: r.get(11)?,
    })
}

fn endpoint(r: &rusqlite::Row<'_>) -> rusqlite::Result<Endpoint> {
    let events: String = r.get(3)?;
    Ok(Endpoint {
        id: r.get(0)?,
        url: r.get(1)?,
        secret: r.get(2)?,
        events: events
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        created_at_ms: r.get(4)?,
    })
}

impl Store {
    /// Adds a webhook endpoint.
    pub fn add_endpoint(&self, e: &Endpoint) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO webhooks (id, url, secret, events, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![e.id, e.url, e.secret, e.events.join(","), e.created_at_ms],
        )?;
        Ok(())
    }

    /// Every endpoint, oldest first.
    pub fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, url, secret, events, created_at FROM webhooks ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], endpoint)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One endpoint.
    pub fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, url, secret, events, created_at FROM webhooks WHERE id = ?1",
                [id],
                endpoint,
            )
            .optional()?)
    }

    /// Deletes an endpoint and its deliveries; whether it existed.
    pub fn delete_endpoint(&self, id: &str) -> Result<bool, StoreError> {
        self.conn
            .execute("DELETE FROM webhook_deliveries WHERE endpoint = ?1", [id])?;
        Ok(self
            .conn
            .execute("DELETE FROM webhooks WHERE id = ?1", [id])?
            > 0)
    }

    /// Queues event `event_id` for every endpoint that wants its type, due
    /// at once; an endpoint that already has this event is skipped.
    /// Returns how many deliveries were queued.
    pub fn enqueue_event(
        &mut self,
        event_id: &str,
        event_type: &str,
        body: &str,
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let endpoints = self.endpoints()?;
        let tx = self.conn.transaction()?;
        let mut queued = 0;
        for e in endpoints.iter().filter(|e| e.wants(event_type)) {
            queued += tx.execute(
                "INSERT OR IGNORE INTO webhook_deliveries
                     (endpoint, event_id, event_type, body, created_at, next_at, state)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5, 'pending')",
                params![e.id, event_id, event_type, body, now_ms],
            )?;
        }
        tx.commit()?;
        Ok(queued)
    }

    /// Pending deliveries due at `now_ms`, soonest first.
    pub fn due_deliveries(&self, now_ms: i64, limit: usize) -> Result<Vec<Delivery>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
             WHERE state = 'pending' AND next_at <= ?1 ORDER BY next_at, id LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![now_ms, limit as i64], delivery)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Pending deliveries of one endpoint due at `now_ms`, soonest first.
    pub fn due_for(
        &self,
        endpoint: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
             WHERE state = 'pending' AND endpoint = ?1 AND next_at <= ?2
             ORDER BY next_at, id LIMIT ?3"
        ))?;
        let rows = stmt.query_map(params![endpoint, now_ms, limit as i64], delivery)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// When the next pending delivery is due, if any.
    pub fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self.conn.query_row(
            "SELECT MIN(next_at) FROM webhook_deliveries WHERE state = 'pending'",
            [],
            |r| r.get::<_, Option<i64>>(0),
        )?)
    }

    /// Records the result of one attempt of delivery `id`.
    pub fn record_attempt(
        &self,
        id: i64,
        attempt: &Attempt,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let (state, status, error, next_at, done) = match attempt {
            Attempt::Delivered { status } => ("delivered", Some(*status), None, None, Some(now_ms)),
            Attempt::Retry {
                status,
                error,
                next_at_ms,
            } => (
                "pending",
                *status,
                Some(error.as_str()),
                Some(*next_at_ms),
                None,
            ),
            Attempt::GaveUp { status, error } => {
                ("failed", *status, Some(error.as_str()), None, Some(now_ms))
            }
        };
        self.conn.execute(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, state = ?2, last_status = ?3,
                 last_error = ?4, next_at = COALESCE(?5, next_at), done_at = ?6
             WHERE id = ?1",
            params![id, state, status, error, next_at, done],
        )?;
        Ok(())
    }

    /// The latest deliveries of an endpoint, newest first, below `before`
    /// (a delivery id) if given.
    pub fn deliveries(
        &self,
        endpoint: &str,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries
             WHERE endpoint = ?1 AND id < ?2 ORDER BY id DESC LIMIT ?3"
        ))?;
        let rows = stmt.query_map(
            params![endpoint, before.unwrap_or(i64::MAX), limit as i64],
            delivery,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets finished deliveries older than `before_ms`.
    pub fn prune_deliveries(&self, before_ms: i64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM webhook_deliveries WHERE state != 'pending' AND done_at < ?1",
            [before_ms],
        )?)
    }

    /// Records that participant `pid` wants a reminder when `space` starts
    /// (replacing theirs), unless `max` are already waiting. Whether it
    /// was kept.
    pub fn add_reminder(
        &self,
        space: &str,
        pid: &str,
        name: &str,
        contact: &str,
        max: usize,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM reminders WHERE space = ?1 AND pid != ?2",
            params![space, pid],
            |r| r.get(0),
        )?;
        if n as usize >= max {
            return Ok(false);
        }
        self.conn.execute(
            "INSERT OR REPLACE INTO reminders (space, pid, name, contact, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![space, pid, name, contact, now_ms],
        )?;
        Ok(true)
    }

    /// Forgets `pid`'s reminder; whether there was one.
    pub fn delete_reminder(&self, space: &str, pid: &str) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM reminders WHERE space = ?1 AND pid = ?2",
            params![space, pid],
        )? > 0)
    }

    /// The reminders of a space: (participant, name, contact), oldest first.
    pub fn reminders(&self, space: &str) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT pid, name, contact FROM reminders WHERE space = ?1 ORDER BY created_at, pid",
        )?;
        let rows = stmt.query_map([space], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Writes a space's analytics (a JSON document).
    pub fn save_stats(&self, space: &str, body: &str, now_ms: i64) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO space_stats (id, body, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT(id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            params![space, body, now_ms],
        )?;
        Ok(())
    }

    /// Every space's stored analytics: (space id, JSON document).
    pub fn load_stats(&self) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id, body FROM space_stats")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str, events: &[&str]) -> Endpoint {
        Endpoint {
            id: id.into(),
            url: format!("http://127.0.0.1:1/{id}"),
            secret: "whsec_AAAA".into(),
            events: events.iter().map(|s| s.to_string()).collect(),
            created_at_ms: 1,
        }
    }

    #[test]
    fn events_are_queued_once_per_wanting_endpoint_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.add_endpoint(&ep("all", &[])).unwrap();
            s.add_endpoint(&ep("ends", &["space.ended"])).unwrap();
            assert_eq!(s.enqueue_event("e1", "space.started", "{}", 10).unwrap(), 1);
            assert_eq!(s.enqueue_event("e2", "space.ended", "{}", 11).unwrap(), 2);
            // The same event again (raised twice) is not queued twice.
            assert_eq!(s.enqueue_event("e2", "space.ended", "{}", 12).unwrap(), 0);
            let due = s.due_deliveries(11, 10).unwrap();
            assert_eq!(due.len(), 3);
            let retry = Attempt::Retry {
                status: Some(500),
                error: "HTTP 500".into(),
                next_at_ms: 100,
            };
            s.record_attempt(due[0].id, &retry, 11).unwrap();
            s.record_attempt(due[1].id, &Attempt::Delivered { status: 204 }, 11)
                .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let due = s.due_deliveries(50, 10).unwrap();
        assert_eq!(due.len(), 1, "the retried one waits for its time");
        assert_eq!(s.next_due().unwrap(), Some(11));
        let later = s.due_deliveries(100, 10).unwrap();
        assert_eq!(later.len(), 2);
        let log = s.deliveries("all", None, 10).unwrap();
        assert_eq!(log.len(), 2);
        assert!(
            log.iter()
                .any(|d| d.attempts == 1 && d.last_status == Some(500))
        );
        assert!(s.delete_endpoint("all").unwrap());
        assert!(s.deliveries("all", None, 10).unwrap().is_empty());
        assert_eq!(s.endpoints().unwrap(), vec![ep("ends", &["space.ended"])]);
    }
}
