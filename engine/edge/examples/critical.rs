//! Writes the critical rendition of a transport stream: `critical IN OUT [no-b]`.

use blockcast_edge::ts::{CriticalFilter, Rendition, RenditionConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, input, output, rest @ ..] = args.as_slice() else {
        return Err("usage: critical IN OUT [no-b]".into());
    };
    let rendition = if rest.first().is_some_and(|arg| arg == "no-b") {
        Rendition::NoBFrames
    } else {
        Rendition::KeyFrames
    };
    let mut filter = CriticalFilter::new(RenditionConfig {
        rendition,
        ..RenditionConfig::default()
    });
    let mut out = Vec::new();
    for block in std::fs::read(input)?.chunks(1 << 20) {
        filter.push(block, &mut out)?;
    }
    filter.finish(&mut out)?;
    std::fs::write(output, out)?;
    eprintln!("{:?}", filter.stats());
    Ok(())
}
