//! `wsroom-load`: see the library ([`wsroom_load`]) for the scenarios.

use clap::Parser as _;

fn main() {
    wsroom_load::run_and_exit(wsroom_load::Cli::parse())
}
