//! How fast the simulation core produces pings, and how much memory a
//! vehicle takes. Run in release:
//!
//! `cargo run --release -p fleetpipe-sim --example throughput -- [vehicles] [simulated seconds] [warm-up seconds]`
//!
//! Prints the fleet's build time and memory per vehicle, then pings/s of
//! `Fleet::advance` alone and with JSON and Protobuf encoding.

use std::time::Instant;

use fleetpipe_sim::{Encoding, Fleet, SimConfig, SimError, encode};

fn main() -> Result<(), SimError> {
    let mut args = std::env::args().skip(1);
    let vehicles: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let seconds: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let warmup: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_800);
    let cfg = SimConfig {
        vehicles,
        // A city big enough for the fleet: 400 x 400 blocks of 150 m.
        grid_blocks: 400,
        customers: 20_000,
        depots: 20,
        charging_stations: 200,
        ..SimConfig::default()
    };
    let start = 1_795_420_800_000;
    let t = Instant::now();
    let mut fleet = Fleet::new(&cfg, start)?;
    println!(
        "{vehicles} vehicles built in {:.2?}, {} bytes per vehicle",
        t.elapsed(),
        fleet.memory_bytes() / fleet.len().max(1)
    );
    // Warm up past the depot departures so most vehicles drive (1 Hz pings).
    let mut out = Vec::new();
    let t = Instant::now();
    for _ in 0..warmup {
        fleet.advance(1_000, &mut out);
        out.clear();
    }
    println!("warm-up ({warmup} simulated s) took {:.2?}", t.elapsed());
    for (label, encoding) in [
        ("advance only", None),
        ("+ JSON", Some(Encoding::Json)),
        ("+ Protobuf", Some(Encoding::Protobuf)),
    ] {
        let t = Instant::now();
        let mut pings = 0;
        let mut bytes = 0;
        for _ in 0..seconds {
            pings += fleet.advance(1_000, &mut out);
            if let Some(e) = encoding {
                bytes += out.iter().map(|m| encode(m, e).len()).sum::<usize>();
            }
            out.clear();
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{label:>13}: {pings} pings in {secs:.2} s = {:.0} pings/s ({} simulated s; {} MB encoded)",
            pings as f64 / secs,
            seconds,
            bytes / 1_000_000
        );
    }
    println!(
        "memory after the run: {} bytes per vehicle (incl. buffered pings)",
        fleet.memory_bytes() / fleet.len().max(1)
    );
    Ok(())
}
