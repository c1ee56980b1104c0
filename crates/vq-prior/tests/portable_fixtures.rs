//! Files arithmetic-coded by the portable coder (format version 3) on one machine decode on any
//! other: `tests/fixtures/portable/` holds such files, made by `vq-cli encode --entropy` with
//! the bundled prior (on an AMD EPYC Zen 4, 2026-12-07), beside the same codes packed, and
//! `tables.txt` the hash of every frequency table each was coded with. The team's machines and
//! CI alternate between Intel and AMD CPUs (AVX2, AVX-512, AMX), so this test, run wherever CI
//! runs, checks portability over time.

use std::collections::BTreeMap;
use std::path::PathBuf;

use tch::Device;
use vq_codes::CodeFile;
use vq_prior::entropy::{self, Grid};
use vq_prior::PriorCheckpoint;
use vq_store::Source;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/portable")
}

fn read(name: &str) -> CodeFile {
    let path = fixtures().join(name);
    CodeFile::from_bytes(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first 16 bytes of the SHA-256 of every table, each entry as 4 little-endian bytes.
fn tables_hash(tables: &[Vec<u32>]) -> String {
    let bytes: Vec<u8> = tables
        .iter()
        .flatten()
        .flat_map(|f| f.to_le_bytes())
        .collect();
    vq_store::hex(&vq_store::model_id(&bytes))
}

#[test]
fn committed_portable_files_decode_to_their_codes_and_tables_on_this_machine() {
    let prior = PriorCheckpoint::open(Source::Bundled(&vq_prior::BUNDLED), Device::Cpu).unwrap();
    let portable = prior.model.portable().unwrap();
    let baseline = portable.baseline_only();
    let listed = std::fs::read_to_string(fixtures().join("tables.txt")).unwrap();
    let expected: BTreeMap<&str, &str> = listed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| l.split_once(' ').expect("NAME HASH"))
        .collect();
    assert!(expected.len() >= 5, "{listed}");
    let mut mismatched = Vec::new();
    for (&name, &hash) in &expected {
        let mut coded = read(&format!("{name}.vqz"));
        let packed = read(&format!("{name}.packed.vqz"));
        assert_eq!(coded.version, 3, "{name}");
        let coding = coded.entropy.clone().expect("an entropy-coded file");
        assert!(prior.model_id.starts_with(&coding.prior_id), "{name}");
        let (gw, gh) = (coded.grid_width as usize, coded.grid_height as usize);
        let (grid, class) = entropy::decode_portable(&portable, &coding.payload, gw, gh);
        assert_eq!(grid.codes, packed.codes, "{name}: decoded codes");
        assert_eq!(
            entropy::decode_portable(&baseline, &coding.payload, gw, gh),
            (grid.clone(), class),
            "{name}: decoded with the instructions every CPU has"
        );
        coded.resolve_vocabulary(512);
        coded.codes = grid.codes.clone();
        coded.validate().unwrap();
        let tables = entropy::portable_tables(&portable, &grid, class);
        assert_eq!(tables.len(), 1 + gw * gh, "{name}");
        let found = tables_hash(&tables);
        if found != hash {
            mismatched.push(format!("{name} {found} (expected {hash})"));
        }
        // Coding the codes again gives the file's bytes.
        let again = entropy::encode_portable(
            &portable,
            &Grid {
                width: gw,
                height: gh,
                codes: grid.codes,
            },
            class,
        );
        assert_eq!(again, coding.payload, "{name}: payload");
    }
    assert!(
        mismatched.is_empty(),
        "frequency tables differ from the committed ones:\n{}",
        mismatched.join("\n")
    );
}
