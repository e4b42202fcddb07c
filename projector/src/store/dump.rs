//! The read models as text, the same for every store: for comparing a rebuilt store with a live
//! one, and one store with another.
//!
//! One line per row, `table key value`, sorted. The key is the row's ids (then its text, if any)
//! joined by `/`; the value is the row of [`rows`](super::rows) as JSON, as the rules left it. A
//! store prints what the rules decided and nothing of how it keeps it (the CQL store's message
//! buckets, or the handles and pairs a smaller id took over, are left out). Checkpoints are left
//! out too, so that a store rebuilt from the log compares equal to the one it replaces.

use std::fmt::Display;

use serde::Serialize;

use super::StoreError;

#[derive(Default)]
pub(crate) struct Dump {
    lines: Vec<String>,
}

impl Dump {
    /// A row whose value is already JSON.
    pub(crate) fn line(&mut self, table: &str, key: impl Display, json: impl Display) {
        self.lines.push(format!("{table} {key} {json}\n"));
    }

    pub(crate) fn row(
        &mut self,
        table: &str,
        key: impl Display,
        value: &impl Serialize,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(value)
            .map_err(|e| StoreError::Storage(format!("dumping {table} {key}: {e}")))?;
        self.line(table, key, json);
        Ok(())
    }

    pub(crate) fn finish(mut self) -> String {
        self.lines.sort_unstable();
        self.lines.concat()
    }
}

/// A key of several ids, as dumps print it.
pub(crate) fn key(ids: &[i64]) -> String {
    ids.iter().map(i64::to_string).collect::<Vec<_>>().join("/")
}
