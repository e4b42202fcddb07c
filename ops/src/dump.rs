//! `switchboard dump`: every read model of a store as stable text on stdout.
//!
//! The text form comes from [`ReadModel::dump`]; putting it on stdout lets an operator check a
//! rebuild with nothing more than `diff <(switchboard dump --store a) <(switchboard dump --store b)`.

use std::io::Write;
use std::sync::Arc;

use anyhow::{Context, ensure};
use switchboard_ingest::url::redacted;
use switchboard_projector::store::ReadModel;

/// Options of `switchboard dump`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The store: a directory of an embedded store (e.g. `<data-dir>/store`), file://DIR or
    /// scylla://HOST:PORT/KEYSPACE. Stop a node using an embedded store first: it can only be
    /// open in one process.
    #[arg(long)]
    pub store: String,
}

/// Runs `switchboard dump`.
pub async fn command(args: Args) -> anyhow::Result<()> {
    let store = open(&crate::rebuild::store_url(&args.store)).await?;
    write_dump(store.as_ref(), &mut std::io::stdout()).await
}

/// The dump of the store at `url`, which must exist.
pub async fn dump_of(url: &str) -> anyhow::Result<String> {
    let store = open(url).await?;
    store.dump().await.with_context(|| format!("reading the store at {}", redacted(url)))
}

async fn open(url: &str) -> anyhow::Result<Arc<dyn ReadModel>> {
    // Opening an embedded store creates it when missing; a typo should not read as an empty store.
    if let Some(dir) = url.strip_prefix("file://") {
        ensure!(std::path::Path::new(dir).is_dir(), "{dir} is not a store directory");
    }
    switchboard_projector::store::open(url)
        .await
        .with_context(|| format!("opening the store at {}", redacted(url)))
}

/// Writes the dump of `store` to `out`, ending with a newline.
pub async fn write_dump(store: &dyn ReadModel, out: &mut impl Write) -> anyhow::Result<()> {
    let dump = store.dump().await.context("dumping the read models")?;
    out.write_all(dump.as_bytes())
        .and_then(|()| if dump.ends_with('\n') { Ok(()) } else { out.write_all(b"\n") })
        .and_then(|()| out.flush())
        .context("writing the dump")
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_projector::store::embedded::EmbeddedStore;

    #[tokio::test]
    async fn the_dump_is_written_whole_and_ends_with_a_newline() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut out = Vec::new();
        write_dump(&store, &mut out).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        assert_eq!(text.trim_end(), store.dump().await.unwrap().trim_end());
    }
}
