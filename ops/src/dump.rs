//! `switchboard dump`: every read model of a store as stable text on stdout.
//!
//! The text form comes from [`ReadModel::dump`]; putting it on stdout lets an operator check a
//! rebuild with nothing more than `diff <(switchboard dump --store a) <(switchboard dump --store b)`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, ensure};
use switchboard_projector::store::ReadModel;
use switchboard_projector::store::embedded::EmbeddedStore;

/// Options of `switchboard dump`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of an embedded store (e.g. `<data-dir>/store`, or what `rebuild --into` made).
    /// Stop the node using it first: the store can only be open in one process.
    #[arg(long)]
    pub store: PathBuf,
}

/// Runs `switchboard dump`.
pub async fn command(args: Args) -> anyhow::Result<()> {
    // Opening a store creates it when missing; a typo should not dump an empty new store.
    ensure!(args.store.is_dir(), "{} is not a store directory", args.store.display());
    let store = EmbeddedStore::open(&args.store)
        .with_context(|| format!("opening the embedded store in {}", args.store.display()))?;
    write_dump(&store, &mut std::io::stdout()).await
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
