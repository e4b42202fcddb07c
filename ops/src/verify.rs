//! `switchboard verify A B`: whether two stores hold the same read models, table by table.
//!
//! Both stores are read in the [dump](crate::dump) form, which is the same for every backend, so
//! an embedded rebuild can be checked against a Cassandra keyspace. Each table gets a row count
//! and a checksum (XXH3 over its sorted lines); for a table that differs, the first row that does
//! is named, with both sides, so an operator starts from the row and not from a diff of millions.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use anyhow::bail;
use xxhash_rust::xxh3::Xxh3;

use crate::rebuild::store_url;

/// Options of `switchboard verify`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// One store: a directory of an embedded store, file://DIR or scylla://HOST:PORT/KEYSPACE.
    /// Stop a node using an embedded store first: it can only be open in one process.
    pub a: String,
    /// The store to compare it with.
    pub b: String,
}

/// Runs `switchboard verify`: prints the comparison, and fails when the stores differ.
pub async fn command(args: Args) -> anyhow::Result<()> {
    let a = crate::dump::dump_of(&store_url(&args.a)).await?;
    let b = crate::dump::dump_of(&store_url(&args.b)).await?;
    let comparison = compare(&a, &b);
    print!("{comparison}");
    match comparison.differing() {
        0 => Ok(()),
        n => bail!("the stores differ in {n} of {} tables", comparison.tables.len()),
    }
}

/// One table on both sides.
#[derive(Debug, Default, PartialEq)]
pub struct Table {
    pub rows: [usize; 2],
    pub checksums: [u64; 2],
    /// The first row, in key order, that is not the same on both sides.
    pub first_difference: Option<Difference>,
}

/// A row as each side has it (`None`: missing there).
#[derive(Debug, PartialEq)]
pub struct Difference {
    pub key: String,
    pub values: [Option<String>; 2],
}

/// Every table either store holds, by name.
#[derive(Debug, Default, PartialEq)]
pub struct Comparison {
    pub tables: BTreeMap<String, Table>,
}

impl Comparison {
    pub fn differing(&self) -> usize {
        self.tables.values().filter(|table| table.first_difference.is_some()).count()
    }
}

/// Compares two dumps: lines `table key value`, sorted.
pub fn compare(a: &str, b: &str) -> Comparison {
    let sides = [tables(a), tables(b)];
    let mut comparison = Comparison::default();
    let names: BTreeSet<&str> = sides.iter().flat_map(|side| side.keys().copied()).collect();
    for name in names {
        let rows = sides.each_ref().map(|side| side.get(name).map_or(&[][..], Vec::as_slice));
        let mut table = Table {
            rows: rows.map(<[Row]>::len),
            checksums: rows.map(checksum),
            first_difference: None,
        };
        if rows[0] != rows[1] {
            table.first_difference = Some(first_difference(rows[0], rows[1]));
        }
        comparison.tables.insert(name.to_owned(), table);
    }
    comparison
}

/// A row of a dump: its key and its value.
type Row<'a> = (&'a str, &'a str);

fn tables(dump: &str) -> BTreeMap<&str, Vec<Row<'_>>> {
    let mut tables: BTreeMap<&str, Vec<Row<'_>>> = BTreeMap::new();
    for line in dump.lines().filter(|line| !line.is_empty()) {
        let mut parts = line.splitn(3, ' ');
        let (table, key, value) =
            (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        tables.entry(table).or_default().push((key, value));
    }
    tables
}

fn checksum(rows: &[Row]) -> u64 {
    let mut hash = Xxh3::new();
    for (key, value) in rows {
        for part in [key.as_bytes(), b" ", value.as_bytes(), b"\n"] {
            hash.update(part);
        }
    }
    hash.digest()
}

/// The first row, in key order, that the two sides do not share; the sides differ.
fn first_difference(a: &[Row], b: &[Row]) -> Difference {
    let shared = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let (x, y) = (a.get(shared), b.get(shared));
    let key = match (x, y) {
        (Some(x), Some(y)) => x.0.min(y.0),
        (Some(only), None) | (None, Some(only)) => only.0,
        (None, None) => unreachable!("sides that differ differ in a row"),
    };
    let value_at = |row: Option<&Row>| row.filter(|row| row.0 == key).map(|row| row.1.to_owned());
    Difference { key: key.to_owned(), values: [value_at(x), value_at(y)] }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (name, table) in &self.tables {
            let verdict = if table.first_difference.is_some() { "DIFFERS" } else { "same" };
            writeln!(
                f,
                "{name:<24} {:>10} rows {:016x} | {:>10} rows {:016x}  {verdict}",
                table.rows[0], table.checksums[0], table.rows[1], table.checksums[1]
            )?;
            if let Some(difference) = &table.first_difference {
                writeln!(f, "  first difference at {name} {}:", difference.key)?;
                for (side, value) in ["A", "B"].iter().zip(&difference.values) {
                    writeln!(f, "    {side}: {}", value.as_deref().unwrap_or("(no such row)"))?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchboard_ingest::Origin;
    use switchboard_projector::store::embedded::EmbeddedStore;

    use super::*;
    use crate::rebuild::{Until, rebuild};
    use crate::testing::{ingest, written_log};

    #[tokio::test]
    async fn stores_rebuilt_from_one_log_verify_and_a_store_behind_it_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = written_log(&dir.path().join("log"), 3).await;
        let path = |name: &str| dir.path().join(name).display().to_string();
        let rebuilt = |name: &str| {
            let (log, into) = (Arc::clone(&log), path(name));
            async move {
                let store = Arc::new(EmbeddedStore::open(into.as_ref()).unwrap());
                rebuild(log, store, &Until::End).await.unwrap();
            }
        };
        rebuilt("a").await;
        rebuilt("b").await;
        let args = |b: &str| Args { a: path("a"), b: path(b) };
        command(args("b")).await.expect("two rebuilds of one log are the same");

        ingest(&log, 2)
            .register_user(&Origin::system("test"), "late", "Late", "hash".into())
            .await
            .unwrap();
        rebuilt("c").await;
        let error = command(args("c")).await.unwrap_err().to_string();
        // The new user and their handle.
        assert!(error.starts_with("the stores differ in 2 of "), "{error}");
    }

    const A: &str = "messages 1/1 {\"body\":\"hi\"}\nmessages 1/2 {\"body\":\"yo\"}\nusers 1 {\"handle\":\"ada\"}\n";

    #[test]
    fn equal_dumps_are_the_same_table_by_table() {
        let comparison = compare(A, A);
        assert_eq!(comparison.differing(), 0);
        let messages = &comparison.tables["messages"];
        assert_eq!(messages.rows, [2, 2]);
        assert_eq!(messages.checksums[0], messages.checksums[1]);
        assert_ne!(messages.checksums[0], comparison.tables["users"].checksums[0]);
    }

    #[test]
    fn the_first_differing_row_is_named_with_both_sides() {
        let changed = A.replace("\"yo\"", "\"yo!\"");
        let comparison = compare(A, &changed);
        assert_eq!(comparison.differing(), 1);
        let messages = &comparison.tables["messages"];
        assert_ne!(messages.checksums[0], messages.checksums[1]);
        let difference = messages.first_difference.as_ref().unwrap();
        assert_eq!(difference.key, "1/2");
        assert_eq!(
            difference.values,
            [Some("{\"body\":\"yo\"}".to_owned()), Some("{\"body\":\"yo!\"}".to_owned())]
        );
        let shown = comparison.to_string();
        assert!(shown.contains("first difference at messages 1/2"), "{shown}");
        assert!(shown.lines().any(|line| line.starts_with("users") && line.ends_with("same")));
    }

    #[test]
    fn rows_and_tables_missing_on_one_side_are_differences() {
        let fewer = A.replace("messages 1/1 {\"body\":\"hi\"}\n", "");
        let comparison = compare(A, &fewer);
        let difference = comparison.tables["messages"].first_difference.as_ref().unwrap();
        assert_eq!(difference.key, "1/1");
        assert_eq!(difference.values, [Some("{\"body\":\"hi\"}".to_owned()), None]);

        let no_users = A.replace("users 1 {\"handle\":\"ada\"}\n", "");
        let comparison = compare(&no_users, A);
        assert_eq!(comparison.tables["users"].rows, [0, 1]);
        let difference = comparison.tables["users"].first_difference.as_ref().unwrap();
        assert_eq!(difference.values, [None, Some("{\"handle\":\"ada\"}".to_owned())]);
    }
}
