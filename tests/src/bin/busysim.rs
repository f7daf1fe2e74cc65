//! busysim: the disguises of minersim (rename, deleted binary, memfd,
//! /dev/shm, config files) with no miner strings in the binary: what an
//! unknown miner looks like to a detector that cannot match its content.

fn main() {
    rigwatch_e2e::run(std::env::args().skip(1).collect(), &["busysim"]);
}
