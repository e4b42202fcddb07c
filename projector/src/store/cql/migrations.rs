//! The schema, created and brought up to date when a store connects.
//!
//! Start-up creates the keyspace if it is missing (replicated as the URL says), then the
//! `schema_migrations` table, which records each applied migration by version. Neither can be a
//! migration itself: the keyspace holds the record and the record needs its table. Then every
//! migration in [`MIGRATIONS`] whose version is not recorded has its statements run in order and
//! is recorded.
//!
//! Every statement must be safe to run again, which `IF NOT EXISTS` makes DDL: two processes
//! starting at once may both find a version unrecorded and both run it, and a process that dies
//! halfway through a migration runs all of it again on its next start. Recording is a plain
//! upsert for the same reason; a version recorded twice is recorded once.
//!
//! Adding a column is the exception: `ALTER TABLE … ADD IF NOT EXISTS` is Cassandra's alone, not
//! ScyllaDB's. So a statement of the form `ALTER TABLE table ADD column type` is run only when
//! `system_schema.columns` (which both engines have) lacks the column, and when it fails, it
//! counts as done if the column is there by then (another process added it meanwhile).
//!
//! The driver waits for schema agreement after each DDL statement (its default), so the next
//! statement, and the statements prepared once the migrations are done, see the new schema on
//! every node.
//!
//! A migration is a file of CQL statements, each ending in `;`, where `--` starts a comment that
//! runs to the end of the line. Statements name tables without a keyspace.

use scylla::client::session::Session;

use super::config::CqlConfig;
use super::error::failed;
use crate::store::StoreError;

/// One version of the schema, as a file under `migrations/`.
pub(super) struct Migration {
    pub version: i32,
    pub name: &'static str,
    cql: &'static str,
}

/// In version order. Applied migrations are never edited: a change is a new migration.
pub(super) const MIGRATIONS: &[Migration] = &[
    Migration { version: 1, name: "initial", cql: include_str!("migrations/001_initial.cql") },
    Migration { version: 2, name: "calls", cql: include_str!("migrations/002_calls.cql") },
    Migration { version: 3, name: "locations", cql: include_str!("migrations/003_locations.cql") },
    Migration { version: 4, name: "media", cql: include_str!("migrations/004_media.cql") },
];

impl Migration {
    /// The file's statements, in order, without comments.
    pub(super) fn statements(&self) -> Vec<String> {
        let text: String = self
            .cql
            .lines()
            .map(|line| line.split_once("--").map_or(line, |(code, _)| code))
            .collect::<Vec<_>>()
            .join("\n");
        text.split(';')
            .map(str::trim)
            .filter(|statement| !statement.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Creates the keyspace if needed, switches `session` to it and applies every migration not yet
/// recorded there. Returns the versions this call applied.
pub(super) async fn run(session: &Session, config: &CqlConfig) -> Result<Vec<i32>, StoreError> {
    let keyspace = &config.keyspace;
    let create = format!(
        "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {}",
        config.replication.to_cql()
    );
    execute(session, &create).await?;
    session
        .use_keyspace(keyspace, false)
        .await
        .map_err(|e| failed(format_args!("switching to keyspace {keyspace}"), e))?;
    execute(
        session,
        "CREATE TABLE IF NOT EXISTS schema_migrations \
         (version int PRIMARY KEY, name text, applied_at timestamp)",
    )
    .await?;

    let recorded = applied_versions(session).await?;
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| !recorded.contains(&m.version)) {
        for statement in migration.statements() {
            match AddColumn::parse(&statement) {
                Some(added) => added.run(session, keyspace, &statement).await?,
                None => execute(session, &statement).await?,
            }
        }
        session
            .query_unpaged(
                "INSERT INTO schema_migrations (version, name, applied_at) \
                 VALUES (?, ?, toTimestamp(now()))",
                (migration.version, migration.name),
            )
            .await
            .map_err(|e| failed(format_args!("recording migration {}", migration.version), e))?;
        tracing::info!(
            keyspace,
            version = migration.version,
            name = migration.name,
            "applied CQL migration"
        );
        applied.push(migration.version);
    }
    // Two processes migrating one keyspace at once can lose a column one of them added: the
    // other's `CREATE TABLE IF NOT EXISTS` of the same table, landing at the same moment,
    // replaces the table (Cassandra does not serialise schema changes from different clients).
    // Adding every migration's columns again, where missing, makes the end state whole.
    for statement in MIGRATIONS.iter().flat_map(Migration::statements) {
        if let Some(added) = AddColumn::parse(&statement) {
            added.run(session, keyspace, &statement).await?;
        }
    }
    Ok(applied)
}

/// The versions recorded in the session's keyspace.
/// The recorded versions, ascending (the table returns them in partition order).
pub(super) async fn applied_versions(session: &Session) -> Result<Vec<i32>, StoreError> {
    let what = "reading schema_migrations";
    let result = session
        .query_unpaged("SELECT version FROM schema_migrations", ())
        .await
        .map_err(|e| failed(what, e))?
        .into_rows_result()
        .map_err(|e| failed(what, e))?;
    let rows = result.rows::<(i32,)>().map_err(|e| failed(what, e))?;
    let mut versions = rows
        .map(|row| row.map(|(version,)| version).map_err(|e| failed(what, e)))
        .collect::<Result<Vec<_>, _>>()?;
    versions.sort_unstable();
    Ok(versions)
}

/// An `ALTER TABLE table ADD column type` statement, made repeatable by looking first.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AddColumn {
    table: String,
    column: String,
}

impl AddColumn {
    /// The table and column a statement adds, if it is such a statement. Unquoted CQL names are
    /// case-insensitive and stored in lower case.
    pub(super) fn parse(statement: &str) -> Option<AddColumn> {
        let words: Vec<&str> = statement.split_whitespace().collect();
        match words.as_slice() {
            [alter, table_kw, table, add, column, _type, ..]
                if alter.eq_ignore_ascii_case("alter")
                    && table_kw.eq_ignore_ascii_case("table")
                    && add.eq_ignore_ascii_case("add") =>
            {
                Some(AddColumn { table: table.to_lowercase(), column: column.to_lowercase() })
            }
            _ => None,
        }
    }

    async fn run(
        &self,
        session: &Session,
        keyspace: &str,
        statement: &str,
    ) -> Result<(), StoreError> {
        if self.exists(session, keyspace).await? {
            return Ok(());
        }
        match execute(session, statement).await {
            Err(_) if self.exists(session, keyspace).await? => Ok(()),
            result => result,
        }
    }

    async fn exists(&self, session: &Session, keyspace: &str) -> Result<bool, StoreError> {
        let what = format!("looking for column {}.{}", self.table, self.column);
        let result = session
            .query_unpaged(
                "SELECT column_name FROM system_schema.columns \
                 WHERE keyspace_name = ? AND table_name = ? AND column_name = ?",
                (keyspace, &self.table, &self.column),
            )
            .await
            .map_err(|e| failed(&what, e))?
            .into_rows_result()
            .map_err(|e| failed(&what, e))?;
        Ok(result.rows_num() > 0)
    }
}

async fn execute(session: &Session, statement: &str) -> Result<(), StoreError> {
    session
        .query_unpaged(statement, ())
        .await
        .map_err(|e| failed(format_args!("running `{statement}`"), e))?;
    Ok(())
}
