//! `cargo xtask bench --code-layout`: which of ztunnel's functions a node
//! runs, for the release build's code layout (`ztunnel/layout.ld`, a linker
//! script that `ztunnel/build.rs` passes to release links).
//!
//! Two ztunnels run under callgrind on the bench's testbed, with its mesh
//! configuration, while traffic goes through them: start-up, certificates
//! from the CA, short connections over IPv4 and IPv6 and a 4 MiB transfer,
//! then idle time; once with the loopback shortcut on, once with it off.
//! Callgrind's profile names every function that ran; the script places
//! those the binary defines first, hottest first (by instructions executed),
//! in an output section of their own before `.text`. A function whose every
//! instance ran is matched without the hash that Rust's legacy mangling
//! appends (`17h<16 hex digits>E`): it changes with the features a
//! dependency is built with, which differ between `cargo build -p ztunnel`
//! and a workspace build. Others are named whole.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use super::{
    http::Credentials,
    run::{bench_mesh, ztunnel_options},
};
use crate::{
    mesh::{self, Ztunnel},
    testbed::Testbed,
};

/// What the profile found.
#[derive(Debug)]
pub struct Layout {
    /// The section names to place first (patterns), hottest first.
    pub sections: Vec<String>,
    /// The size of the functions they match in the binary, bytes.
    pub bytes: u64,
    /// The binary's code, bytes (every function it defines).
    pub text_bytes: u64,
}

/// Profiles the release ztunnel next to this executable and writes its
/// layout to `out`.
pub fn profile(out: &Path) -> Result<Layout, String> {
    let dir = std::env::temp_dir().join(format!("ambit-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = run_profile(&dir).and_then(|profiles| {
        let binary = mesh::ztunnel_binary();
        let defined = defined_functions(&binary)?;
        let layout = layout(&profiles, &defined);
        if layout.sections.is_empty() {
            return Err(format!(
                "callgrind named none of the functions of {}",
                binary.display()
            ));
        }
        std::fs::write(out, render(&layout)).map_err(|e| format!("{}: {e}", out.display()))?;
        Ok(layout)
    });
    if let Err(error) = std::fs::remove_dir_all(&dir) {
        eprintln!("ambit-bench: removing {}: {error}", dir.display());
    }
    result
}

/// Runs the bench's testbed and mesh configuration with both ztunnels under
/// callgrind, once with the loopback shortcut on (as the bench's `mesh`
/// scenario runs them) and once with it off, and returns the text of the four
/// profiles.
fn run_profile(dir: &Path) -> Result<Vec<String>, String> {
    let (bed, config) = bench_mesh("layout", &Credentials::generate())?;
    let mut profiles = Vec::new();
    for sockmap in [true, false] {
        let mut options = ztunnel_options(sockmap);
        options.launcher = [
            "valgrind",
            "--tool=callgrind",
            "--demangle=no",
            "--dump-instr=no",
            "--collect-atstart=yes",
        ]
        .iter()
        .map(OsString::from)
        .chain([OsString::from(format!(
            "--callgrind-out-file={}/callgrind.%p",
            dir.display()
        ))])
        .collect();
        let ztunnels = ["a", "b"]
            .map(|node| Ztunnel::start(&bed, node, &config, &options).map_err(|e| e.to_string()));
        let mut ztunnels: Vec<Ztunnel> = ztunnels.into_iter().collect::<Result<_, _>>()?;
        let shortcut = if sockmap { "on" } else { "off" };
        traffic(&bed).map_err(|e| format!("traffic with the shortcut {shortcut}: {e}"))?;
        // Idle: the timers and watchers that run between connections.
        std::thread::sleep(Duration::from_secs(12));
        for ztunnel in &ztunnels {
            let pid = ztunnel.pid();
            let status = Command::new("callgrind_control")
                .args(["--dump", &pid.to_string()])
                .output()
                .map_err(|e| format!("callgrind_control: {e}"))?;
            if !status.status.success() {
                return Err(format!(
                    "callgrind_control --dump {pid}: {}",
                    String::from_utf8_lossy(&status.stderr)
                ));
            }
            profiles.push(wait_for_dump(dir, pid)?);
        }
        for ztunnel in &mut ztunnels {
            ztunnel
                .stop(Duration::from_secs(30))
                .map_err(|e| format!("stopping ztunnel: {e}"))?;
        }
    }
    Ok(profiles)
}

/// Short connections both families, and a bulk transfer.
fn traffic(bed: &Testbed) -> Result<(), String> {
    let _echo = mesh::start_server(bed, "server", "echo", "[::]:7000");
    let _sink = mesh::start_server(bed, "server", "sink", "[::]:7001");
    let server = bed.pod("server");
    for ip in [
        std::net::IpAddr::from(server.ipv4()),
        std::net::IpAddr::from(server.ipv6()),
    ] {
        for i in 0..5 {
            mesh::send(
                bed,
                "client",
                SocketAddr::new(ip, 7000),
                &format!("layout-{i}"),
            )?;
        }
    }
    let mut bulk = bed.pod_command("client", mesh::testbin_binary());
    bulk.args([
        "checksum",
        &SocketAddr::new(server.ipv4().into(), 7001).to_string(),
        "4194304",
    ]);
    bed.run(bulk, Duration::from_secs(120))
        .map_err(|e| format!("bulk transfer: {e}"))?;
    Ok(())
}

/// The dump callgrind writes for `pid` (`callgrind.<pid>.1`), once complete.
fn wait_for_dump(dir: &Path, pid: u32) -> Result<String, String> {
    let path: PathBuf = dir.join(format!("callgrind.{pid}.1"));
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(&path)
            && text.contains("\ntotals:")
        {
            return Ok(text);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no complete callgrind dump at {}", path.display()))
}

/// Instructions executed in each function (self cost) of a callgrind profile,
/// by symbol name (the recursion marker `'N` removed).
pub fn self_costs(profile: &str) -> HashMap<String, u64> {
    let mut names: HashMap<&str, &str> = HashMap::new();
    let mut costs: HashMap<String, u64> = HashMap::new();
    let mut current: Option<String> = None;
    let mut after_calls = false;
    for line in profile.lines() {
        if let Some(rest) = line
            .strip_prefix("fn=")
            .or_else(|| line.strip_prefix("cfn="))
        {
            let name = match rest.strip_prefix('(').and_then(|r| r.split_once(')')) {
                Some((id, name)) if !name.trim().is_empty() => {
                    names.insert(id, name.trim());
                    Some(name.trim())
                }
                Some((id, _)) => names.get(id).copied(),
                None => Some(rest.trim()),
            };
            let name = name.map(|n| n.split_once('\'').map_or(n, |(base, _)| base).to_owned());
            if let Some(name) = &name {
                costs.entry(name.clone()).or_insert(0);
            }
            if line.starts_with("fn=") {
                current = name;
            }
            continue;
        }
        if line.starts_with("calls=") {
            after_calls = true;
            continue;
        }
        let is_cost = line
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | '*'));
        if !is_cost {
            continue;
        }
        if after_calls {
            // The inclusive cost of the call just named, not this function's.
            after_calls = false;
            continue;
        }
        if let (Some(name), Some(cost)) = (
            &current,
            line.split_whitespace()
                .nth(1)
                .and_then(|c| c.parse::<u64>().ok()),
        ) {
            *costs.entry(name.clone()).or_insert(0) += cost;
        }
    }
    costs
}

/// The functions a binary defines, with their sizes (`nm`).
fn defined_functions(binary: &Path) -> Result<HashMap<String, u64>, String> {
    let output = Command::new("nm")
        .args(["--defined-only", "--print-size"])
        .arg(binary)
        .output()
        .map_err(|e| format!("nm: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "nm {}: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(parse_nm(&String::from_utf8_lossy(&output.stdout)))
}

/// `nm --print-size` lines of code symbols: name -> size.
fn parse_nm(listing: &str) -> HashMap<String, u64> {
    listing
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_address, size, kind, name) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            matches!(kind, "t" | "T" | "W" | "w")
                .then(|| Some((name.to_owned(), u64::from_str_radix(size, 16).ok()?)))?
        })
        .collect()
}

/// The layout: the functions of `defined` that ran in any profile, hottest
/// first, as section patterns.
fn layout(profiles: &[String], defined: &HashMap<String, u64>) -> Layout {
    let mut costs: HashMap<String, u64> = HashMap::new();
    for profile in profiles {
        for (name, cost) in self_costs(profile) {
            *costs.entry(name).or_insert(0) += cost;
        }
    }
    let mut ran: Vec<(&String, u64)> = costs
        .iter()
        .filter(|(name, _)| defined.contains_key(*name))
        .map(|(name, cost)| (name, *cost))
        .collect();
    ran.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    // A generic function's instances share the name without the hash: one
    // pattern covers them when all of them ran; otherwise the ones that ran
    // are named whole (matched only by a build with the same hashes).
    let instances = count_by_prefix(defined.keys());
    let ran_instances = count_by_prefix(ran.iter().map(|(name, _)| *name));
    let mut sections = Vec::new();
    let mut seen = HashSet::new();
    for &(name, _) in &ran {
        let section = match legacy_prefix(name) {
            Some(prefix) if instances.get(prefix) == ran_instances.get(prefix) => {
                format!(".text.{prefix}*")
            }
            _ => format!(".text.{name}"),
        };
        if seen.insert(section.clone()) {
            sections.push(section);
        }
    }
    // Every function that ran is covered, and a hash-free pattern only
    // stands for instances that all ran: the covered code is what ran.
    let bytes = ran.iter().filter_map(|(name, _)| defined.get(*name)).sum();
    Layout {
        sections,
        bytes,
        text_bytes: defined.values().sum(),
    }
}

/// How many of `names` share each legacy name without its hash.
fn count_by_prefix<'a>(names: impl Iterator<Item = &'a String>) -> HashMap<&'a str, usize> {
    let mut counts = HashMap::new();
    for prefix in names.filter_map(|name| legacy_prefix(name)) {
        *counts.entry(prefix).or_insert(0) += 1;
    }
    counts
}

/// A legacy-mangled name without its hash: `_ZN3foo3bar17h` of
/// `_ZN3foo3bar17h0123456789abcdefE`; `None` for other names.
fn legacy_prefix(symbol: &str) -> Option<&str> {
    let hash = symbol.strip_prefix("_ZN")?.strip_suffix('E')?;
    let (_, digits) = hash.split_at_checked(hash.len().checked_sub(16)?)?;
    let prefix = &symbol[..symbol.len() - 17];
    (digits.bytes().all(|b| b.is_ascii_hexdigit()) && prefix.ends_with("17h")).then_some(prefix)
}

/// The linker script: the sections of [`Layout`] in an output section of
/// their own, inserted before `.text`.
fn render(layout: &Layout) -> String {
    let mut text = format!(
        "/* ztunnel's code layout: the functions a node ran under `cargo xtask bench\n   \
         --code-layout`, hottest first ({} patterns, {} KiB of {} KiB of code when\n   \
         generated). ztunnel/build.rs passes it to release links. Regenerate after\n   \
         changes to what a node runs; a name that no longer exists matches nothing. */\n\
         SECTIONS {{\n  .text.ambit_layout : {{\n",
        layout.sections.len(),
        layout.bytes / 1024,
        layout.text_bytes / 1024
    );
    for section in &layout.sections {
        // LLVM names the section of a cold function (`#[cold]`, such as
        // `RawVec::grow_one`) `.text.unlikely.<name>`.
        let unlikely = section.replacen(".text.", ".text.unlikely.", 1);
        text.push_str(&format!("    *({section} {unlikely})\n"));
    }
    text.push_str("  }\n} INSERT BEFORE .text;\n");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A callgrind profile in its compressed form: names given once by id,
    /// costs per line, and a call's inclusive cost after its `calls=` line.
    const PROFILE: &str = "version: 1\n\
        events: Ir\n\
        fn=(1) main\n\
        0 10\n\
        +2 5\n\
        cfn=(2) work'2\n\
        calls=1 0\n\
        0 1000\n\
        fn=(2)\n\
        0 700\n\
        fn=(3) idle\n\
        * 0\n\
        totals: 715\n";

    #[test]
    fn self_costs_leave_out_what_callees_cost() {
        let costs = self_costs(PROFILE);
        assert_eq!(costs.get("main"), Some(&15));
        assert_eq!(costs.get("work"), Some(&700), "recursion marker removed");
        assert_eq!(costs.get("idle"), Some(&0), "a function that ran stays");
        assert_eq!(costs.len(), 3);
    }

    #[test]
    fn nm_lines_give_code_symbols_and_sizes() {
        let listing = "0000000000001000 0000000000000010 T main\n\
                       0000000000002000 0000000000000200 t work\n\
                       0000000000003000 0000000000000008 r TABLE\n\
                       0000000000004000 U undefined\n";
        let defined = parse_nm(listing);
        assert_eq!(defined.get("main"), Some(&0x10));
        assert_eq!(defined.get("work"), Some(&0x200));
        assert_eq!(defined.len(), 2, "{defined:?}");
    }

    #[test]
    fn legacy_names_lose_their_hash_and_others_have_none() {
        assert_eq!(
            legacy_prefix("_ZN5tokio7runtime4task3raw4poll17h7e3bdf70eef2ae9eE"),
            Some("_ZN5tokio7runtime4task3raw4poll17h")
        );
        for name in [
            "_RNvMs5_NtNtCsjrHSEGnQ3l9_3std2io5errorNtB5_5Error4kind",
            "aws_lc_0_47_0_CBB_add_bytes",
            // Not a hash: too short, not hexadecimal, no `17h` before it.
            "_ZN3foo3bar17habcE",
            "_ZN3foo3bar17hxxxxxxxxxxxxxxxxE",
            "_ZN3foo3bar0123456789abcdefE",
        ] {
            assert_eq!(legacy_prefix(name), None, "{name}");
        }
    }

    #[test]
    fn the_layout_is_hottest_first_one_pattern_per_generic_function() {
        let defined: HashMap<String, u64> = [
            ("main", 16),
            ("work", 512),
            ("cold", 4096),
            ("_ZN3gen4poll17h0000000000000001E", 100),
            ("_ZN3gen4poll17h0000000000000002E", 80),
            ("_ZN3gen4idle17h0000000000000003E", 90),
            ("_ZN3gen4wake17h0000000000000004E", 30),
            ("_ZN3gen4wake17h0000000000000005E", 20),
        ]
        .into_iter()
        .map(|(name, size)| (name.to_owned(), size))
        .collect();
        let profile = format!(
            "{PROFILE}fn=(9) _ZN3gen4poll17h0000000000000001E\n0 50\n\
             fn=(10) _ZN3gen4poll17h0000000000000002E\n0 40\nfn=(11) memcpy\n0 9999\n\
             fn=(12) _ZN3gen4wake17h0000000000000005E\n0 1\n"
        );
        let layout = layout(&[profile], &defined);
        assert_eq!(
            layout.sections,
            [
                ".text.work",
                ".text._ZN3gen4poll17h*",
                ".text.main",
                ".text._ZN3gen4wake17h0000000000000005E"
            ],
            "hottest first; every instance of poll ran, one of wake's; memcpy and \
             idle are not the binary's"
        );
        assert_eq!(layout.bytes, 512 + 100 + 80 + 16 + 20);
        assert_eq!(layout.text_bytes, 16 + 512 + 4096 + 100 + 80 + 90 + 30 + 20);
        let script = render(&layout);
        assert!(script.starts_with("/* ztunnel's code layout"), "{script}");
        assert!(
            script.ends_with(
                "SECTIONS {\n  .text.ambit_layout : {\n    \
                 *(.text.work .text.unlikely.work)\n    \
                 *(.text._ZN3gen4poll17h* .text.unlikely._ZN3gen4poll17h*)\n    \
                 *(.text.main .text.unlikely.main)\n    \
                 *(.text._ZN3gen4wake17h0000000000000005E \
                 .text.unlikely._ZN3gen4wake17h0000000000000005E)\n  }\n\
                 } INSERT BEFORE .text;\n"
            ),
            "{script}"
        );
    }
}
