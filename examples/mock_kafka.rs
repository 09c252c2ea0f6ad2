//! A Kafka cluster for the chaos run on machines without a Kafka broker that survives it: one
//! librdkafka mock broker (the same mock the fault tests use, with consumer groups, session
//! time-outs and rebalances) in a process of its own, so `labelmill worker` processes and Python
//! confluent-kafka clients connect to it over TCP as to any broker.
//!
//! `cargo run --release --example mock_kafka -- TOPIC:PARTITIONS...` prints the bootstrap address
//! on the first line of stdout, then reads commands from stdin: `restart SECONDS` takes the
//! broker down (connections dropped, new ones refused) for SECONDS and brings it back, answering
//! `restarted`. The cluster lives until stdin closes. It keeps about 5 MiB per partition (older
//! messages are dropped): spread large topics over partitions.

use std::io::{BufRead, Write};
use std::time::Duration;

use rdkafka::mocking::MockCluster;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mock = MockCluster::new(1)?;
    for spec in std::env::args().skip(1) {
        let (topic, partitions) = spec
            .split_once(':')
            .ok_or_else(|| format!("'{spec}' is not TOPIC:PARTITIONS"))?;
        mock.create_topic(topic, partitions.parse()?, 1)?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", mock.bootstrap_servers())?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let mut words = line.split_whitespace();
        match (words.next(), words.next().map(str::parse::<f64>)) {
            (Some("restart"), Some(Ok(secs))) => {
                mock.broker_down(1)?;
                std::thread::sleep(Duration::from_secs_f64(secs));
                mock.broker_up(1)?;
                writeln!(out, "restarted")?;
                out.flush()?;
            }
            _ => eprintln!("mock_kafka: unknown command '{line}' (restart SECONDS)"),
        }
    }
    Ok(())
}
