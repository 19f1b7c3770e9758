//! Durable state: SQLite (bundled) for spaces and the secrets a node keeps.
//!
//! A space is stored as one row holding its JSON snapshot: it holds only the
//! participants that matter (stage, hands, removals, bans), so it stays
//! small, and a write is one statement. Listeners who only listen are never
//! written. The store is synchronous; the server calls it off the async
//! threads and never from the media path.

use std::path::Path;

use amphi_core::{Space, SpaceId, SpaceState};
use rusqlite::{Connection, OptionalExtension, params};

pub mod hooks;

pub use hooks::{Attempt, Delivery, DeliveryState, Endpoint};

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("stored space {id} is corrupt: {why}")]
    Corrupt { id: String, why: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// The node's database.
pub struct Store {
    conn: Connection,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS spaces (
    id         TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    body       TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS spaces_state ON spaces(state);
";

impl Store {
    /// Opens (or creates) `amphi.db` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        Self::from_connection(Connection::open(dir.join("amphi.db"))?)
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(conn: Connection) -> Result<Self, StoreError> {
        // WAL with synchronous=NORMAL: a committed write survives a killed
        // process (it is in the OS's hands); only a power cut can lose the
        // last commits.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(hooks::SCHEMA)?;
        Ok(Store { conn })
    }

    /// A 32-byte secret named `name`, created at random the first time.
    pub fn secret(
        &self,
        name: &str,
        fresh: impl FnOnce() -> [u8; 32],
    ) -> Result<[u8; 32], StoreError> {
        let found: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(v) = found
            && let Ok(arr) = <[u8; 32]>::try_from(v.as_slice())
        {
            return Ok(arr);
        }
        let value = fresh();
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![name, value.as_slice()],
        )?;
        Ok(value)
    }

    /// A text setting, if set.
    pub fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [name], |r| {
                r.get::<_, String>(0)
            })
            .optional()?)
    }

    /// Stores a text setting.
    pub fn set_setting(&self, name: &str, value: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
            params![name, value],
        )?;
        Ok(())
    }

    /// Writes the current snapshot of a space.
    pub fn save_space(&self, space: &Space, now_ms: i64) -> Result<(), StoreError> {
        // A Space is plain data (strings, numbers, maps keyed by ids that
        // serialise as strings): serialising it cannot fail.
        let body = serde_json::to_string(space).expect("space serialises");
        self.conn.execute(
            "INSERT INTO spaces (id, state, body, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(id) DO UPDATE SET state = excluded.state, body = excluded.body,
                 updated_at = excluded.updated_at",
            params![space.id.to_string(), space.state.as_str(), body, now_ms],
        )?;
        Ok(())
    }

    /// Every stored space.
    pub fn load_spaces(&self) -> Result<Vec<Space>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT id, body FROM spaces")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, body) = row?;
            let space: Space = serde_json::from_str(&body).map_err(|e| StoreError::Corrupt {
                id: id.clone(),
                why: e.to_string(),
            })?;
            space
                .check_invariants()
                .map_err(|why| StoreError::Corrupt { id, why })?;
            out.push(space);
        }
        Ok(out)
    }

    /// Number of stored spaces in each state.
    pub fn count_by_state(&self, state: SpaceState) -> Result<u64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT COUNT(*) FROM spaces WHERE state = ?1",
            [state.as_str()],
            |r| r.get::<_, i64>(0),
        )? as u64)
    }

    /// Whether a space is stored.
    pub fn has_space(&self, id: SpaceId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT 1 FROM spaces WHERE id = ?1",
                [id.to_string()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amphi_core::ParticipantId;
    use amphi_core::room::{Actor, Command, SpaceOptions};

    #[test]
    fn spaces_and_secrets_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SpaceOptions {
            title: "t".into(),
            scheduled_for_ms: None,
            max_stage: 13,
            record: true,
            public: true,
        };
        let host = ParticipantId(1);
        let mut s = Space::new(SpaceId(9), host, "Host", opts, 0).unwrap();
        s.apply(
            Actor {
                id: host,
                name: "Host",
            },
            Command::Start,
            5,
        )
        .unwrap();
        s.apply(
            Actor {
                id: host,
                name: "Host",
            },
            Command::BringOnStage {
                target: ParticipantId(2),
                name: Some("Two".into()),
            },
            6,
        )
        .unwrap();
        let key = {
            let store = Store::open(dir.path()).unwrap();
            store.save_space(&s, 7).unwrap();
            store.secret("token_key", || [4; 32]).unwrap()
        };
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load_spaces().unwrap(), vec![s]);
        assert_eq!(store.secret("token_key", || [5; 32]).unwrap(), key);
        assert_eq!(store.count_by_state(SpaceState::Live).unwrap(), 1);
        assert!(store.has_space(SpaceId(9)).unwrap());
    }

    #[test]
    fn corrupt_rows_are_reported_not_panicked() {
        let store = Store::in_memory().unwrap();
        store
            .conn
            .execute(
                "INSERT INTO spaces VALUES ('x', 'live', '{not json', 0)",
                [],
            )
            .unwrap();
        assert!(matches!(
            store.load_spaces(),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
