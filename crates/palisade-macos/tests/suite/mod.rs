mod cases;
mod escaping;
mod fixtures;
mod golden;
mod invariants;
