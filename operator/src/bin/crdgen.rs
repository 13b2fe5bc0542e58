//! Prints the `Torrent` CRD as YAML (what the Helm chart ships).

use kube::CustomResourceExt;
use manta_operator::crd::Torrent;

fn main() -> anyhow::Result<()> {
    print!("{}", serde_yaml::to_string(&Torrent::crd())?);
    Ok(())
}
