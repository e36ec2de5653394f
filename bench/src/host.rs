//! What a benchmark report says about the machine it ran on: the CPU, the
//! memory, and the output of a command (`uname -sr`, `rustc --version`,
//! `git describe`), read the same way by every runner.

/// The first CPU of `/proc/cpuinfo` as `model name (family F, model M,
/// cache size)`. Virtual machines often report only "AMD EPYC"; the family
/// (25 = Zen 3/4, 26 = Zen 5) and cache size tell hosts apart whose speed
/// differs by a third for the same code.
#[must_use]
pub fn cpu_description(cpuinfo: &str) -> String {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    let model_name = field("model name").unwrap_or_default();
    let details: Vec<String> = [("family", "cpu family"), ("model", "model")]
        .into_iter()
        .filter_map(|(label, key)| Some(format!("{label} {}", field(key)?)))
        .chain(field("cache size").map(|c| format!("cache size {c}")))
        .collect();
    if details.is_empty() {
        model_name
    } else {
        format!("{model_name} ({})", details.join(", "))
    }
}

/// [`cpu_description`] of this machine (empty when `/proc/cpuinfo` cannot
/// be read).
#[must_use]
pub fn this_cpu() -> String {
    cpu_description(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

/// `MemTotal` of `/proc/meminfo`, GiB (0 when it cannot be read).
#[must_use]
pub fn memory_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1_048_576.0)
}

/// What `cmd args` prints, trimmed; empty when it cannot be run (a report
/// says less rather than fail).
#[must_use]
pub fn command(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::cpu_description;

    #[test]
    fn cpu_description_names_family_model_and_cache() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\n\
                       model\t\t: 2\nmodel name\t: AMD EPYC\ncache size\t: 1024 KB\n\n\
                       processor\t: 1\ncpu family\t: 25\nmodel\t\t: 1\n";
        assert_eq!(
            cpu_description(cpuinfo),
            "AMD EPYC (family 26, model 2, cache size 1024 KB)"
        );
    }

    #[test]
    fn cpu_description_without_details_is_the_model_name() {
        assert_eq!(cpu_description("model name\t: Some CPU\n"), "Some CPU");
        assert_eq!(cpu_description(""), "");
    }
}
