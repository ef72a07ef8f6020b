//! `raftkv-bench compare`: placeholder, filled in below.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {}
pub fn run(_a: &CompareArgs) -> Result<(), String> {
    Err("not yet".into())
}
