//! The fjall keyspaces behind the [`Table`]s, and the decoding and error helpers that every
//! read and write shares.

use std::fmt::Display;

use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use serde::de::DeserializeOwned;

use super::keys::Table;
use crate::store::StoreError;

/// One fjall keyspace per [`Table`], in the order of [`Table::ALL`].
pub(super) struct Tables {
    spaces: Vec<Keyspace>,
}

impl Tables {
    /// Opens (or creates) every table's keyspace.
    pub(super) fn open(db: &Database) -> Result<Tables, StoreError> {
        let spaces = Table::ALL
            .iter()
            .map(|table| {
                db.keyspace(table.name(), KeyspaceCreateOptions::default)
                    .map_err(|e| storage(format_args!("opening keyspace `{}`", table.name()), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tables { spaces })
    }

    pub(super) fn get(&self, table: Table) -> &Keyspace {
        &self.spaces[table as usize]
    }
}

/// A storage failure with what was being done when it happened.
pub(super) fn storage(context: impl Display, error: impl Display) -> StoreError {
    StoreError::Storage(format!("{context}: {error}"))
}

/// Decodes a stored value, naming the key when the bytes are not what the table holds.
pub(super) fn decode<T: DeserializeOwned>(
    table: Table,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| {
        storage(format_args!("corrupt record {}/{}", table.name(), table.describe_key(key)), e)
    })
}
