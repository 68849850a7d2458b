//! Integration tests: the real `probe` binary, loaded into the running kernel, watching real
//! processes on loopback, checked against what they did and against `ss`.
//!
//! They need root, BPF, and a probe binary with its kernel program (`cargo xtask test` gives all
//! three). Without BPF they are skipped, loudly; without root or the kernel program they fail when
//! `PROBE_REQUIRE_INTEGRATION=1` (as `cargo xtask test` sets) and are skipped, loudly, otherwise
//! (a plain `cargo test` of the pure modules).
//!
//! One module per theme; [`harness`] holds what they share. This binary is also every helper
//! process of the tests: `integration helper ROLE_JSON` (see [`harness::roles`]).
// The test runner reads what the tests say on stderr (it is no terminal that can go away).
#![allow(clippy::disallowed_macros)]

mod attach;
mod code_paths;
mod filters;
mod fleet;
mod harness;
mod hostile;
mod hostwide;
mod identity;
mod lifecycle;
mod programs;
mod robustness;
mod runtimes;
mod stuck_kinds;
mod targets;
mod views;

use std::process::ExitCode;

use harness::{
    Role,
    prerequisites::{Missing, prerequisites, required, skip_loudly},
    registry,
};
use libtest_mimic::{Arguments, Trial};

/// One trial per test function, named after it.
macro_rules! trials {
    ($($module:ident::$test:ident),* $(,)?) => {
        vec![$(Trial::test(stringify!($test), || Ok($module::$test()?))),*]
    };
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("helper") {
        return Role::main(&args[2..]);
    }
    let trials = trials![
        lifecycle::close_wait_is_flagged_and_matches_ss,
        lifecycle::idle_established_is_flagged,
        lifecycle::clean_active_close_goes_to_time_wait,
        lifecycle::accepted_connections_belong_to_the_server,
        lifecycle::ipv6_on_loopback,
        targets::a_noisy_neighbour_is_not_traced,
        targets::a_command_is_traced_from_its_first_connection,
        targets::a_missing_pid_is_a_clear_error,
        targets::a_process_that_renames_itself_is_shown_by_its_new_name,
        attach::attach_to_an_existing_close_wait_pile_up,
        attach::only_idle_established_connections_are_flagged,
        attach::a_server_started_before_probe_owns_what_it_accepts,
        attach::a_servers_idle_clients_are_one_group_known_by_its_endpoint,
        targets::forked_workers_are_traced,
        targets::a_client_in_its_own_network_namespace,
        code_paths::stuck_connections_are_grouped_by_the_function_that_opened_them,
        code_paths::without_stacks_there_is_no_stack_map_and_no_opened_at,
        runtimes::a_go_http_clients_leak_is_named_by_the_function_that_made_the_request,
        runtimes::a_go_service_whose_binary_was_replaced_on_disk_is_still_named,
        runtimes::a_go_client_is_named_alike_host_wide_and_in_its_cgroup,
        runtimes::a_stripped_go_binary_is_named_from_its_line_table,
        runtimes::a_c_client_is_named_with_or_without_frame_pointers,
        runtimes::a_rust_release_client_is_named_by_its_own_function,
        runtimes::python_functions_are_named_from_the_running_interpreter,
        runtimes::attached_mid_incident_the_leak_is_traced_to_where_it_goes_on,
        runtimes::node_functions_are_named_from_the_perf_map_or_the_flag_is_named,
        runtimes::java_methods_are_named_from_the_jvms_perf_map,
        robustness::bad_input_gets_a_clear_error_and_no_panic,
        targets::a_thread_id_means_its_process,
        robustness::closing_stdout_ends_probe_cleanly,
        robustness::an_output_that_cannot_be_written_is_an_error_in_every_scope,
        robustness::a_stderr_nobody_reads_is_no_panic,
        robustness::sigterm_still_prints_the_summary,
        robustness::kernel_objects_are_freed_even_after_sigkill,
        robustness::an_unprivileged_user_is_told_what_to_do,
        robustness::a_ring_buffer_overflow_is_counted_and_probe_keeps_up,
        robustness::a_full_owner_map_is_reported_not_fatal,
        targets::a_command_under_sudo_runs_as_the_user_who_asked,
        robustness::the_programs_pass_the_verifier_with_room_to_spare,
        robustness::probe_drops_the_capabilities_it_no_longer_needs,
        robustness::memory_stays_flat_under_sustained_churn,
        robustness::the_reader_is_woken_per_batch_not_per_event,
        filters::filters_show_only_what_was_asked,
        views::metrics_are_served_on_loopback_and_match_ss,
        views::the_report_renders_in_a_browser,
        views::the_live_view_works_in_a_terminal,
        views::the_live_view_degrades_to_lines_without_a_terminal,
        programs::both_kernel_programs_see_the_same_transitions,
        hostile::follow_forks_survives_a_storm_of_short_lived_children,
        hostile::close_wait_found_at_attach_is_flagged_only_once_old_enough,
        hostile::more_existing_sockets_than_max_sockets_degrade_instead_of_failing,
        hostile::the_owner_is_the_process_that_holds_the_socket_after_a_fork,
        hostile::a_socket_passed_over_scm_rights_belongs_to_its_receiver,
        hostile::the_report_never_follows_a_planted_symlink,
        hostile::untrusted_names_never_reach_the_terminal_raw,
        hostile::the_metrics_endpoint_survives_running_out_of_descriptors,
        hostile::sighup_ends_probe_like_sigterm,
        hostile::filters_match_the_addresses_probe_prints,
        hostile::a_filter_means_the_same_everywhere,
        hostile::a_zombie_or_a_kernel_thread_is_refused_with_a_reason,
        hostile::a_connection_of_an_exited_process_is_not_open,
        hostile::nginx_workers_each_own_what_they_accepted,
        identity::a_hanging_connect_gets_its_port_and_inode_from_the_next_refresh,
        identity::the_same_tuple_in_two_namespaces_belongs_to_each_own_process,
        hostwide::sockets_open_before_a_host_wide_attach_are_found_by_the_kernel,
        hostwide::the_whole_host_ranks_its_leakers_and_agrees_with_ss,
        hostwide::a_growing_leak_ranks_above_a_bigger_burst_that_stopped,
        hostwide::a_close_wait_is_said_in_the_words_of_its_peers_protocol,
        hostwide::both_ends_of_an_idle_pool_are_one_entry_the_clients,
        hostwide::a_cgroup_is_traced_with_its_pod_and_container,
        hostwide::bad_cgroups_and_containers_are_clear_errors,
        hostwide::the_fd_forecast_matches_when_the_client_runs_out,
        hostwide::the_port_forecast_matches_when_connect_fails,
        hostwide::the_port_forecast_counts_time_wait_sockets_until_connect_fails,
        stuck_kinds::a_connect_into_a_black_hole_is_flagged_and_a_slow_one_is_not,
        stuck_kinds::a_half_close_the_peer_never_answers_is_flagged_and_a_quick_one_is_not,
        stuck_kinds::a_peer_that_vanishes_leaves_last_ack_and_fin_wait1_flagged,
        stuck_kinds::data_nobody_reads_is_flagged_on_either_side,
        stuck_kinds::a_listener_that_never_accepts_is_flagged_with_its_drops,
        stuck_kinds::kinds_found_at_attach_are_flagged,
        fleet::prometheus_scrapes_probe_and_the_alerts_fire,
        fleet::a_secured_endpoint_serves_prometheus_and_refuses_everyone_else,
        fleet::clients_without_the_password_cannot_keep_the_scraper_out,
    ];
    // Run alone, after the others: they load the whole host (tens of thousands of sockets, a
    // churn at full speed, probe host-wide), which would skew what the others measure and be
    // skewed by them.
    let alone = trials![robustness::no_event_is_lost_while_a_refresh_reads_a_large_socket_table];
    let missing = prerequisites();
    let args = Arguments::from_args();
    let mut together = runnable(trials, &missing);
    let listed: Vec<String> = together
        .iter()
        .chain(&alone)
        .map(|trial| trial.name().to_string())
        .collect();
    // Pure: runs with or without BPF.
    together.push(Trial::test("every_test_function_is_listed", move || {
        let listed: Vec<&str> = listed.iter().map(String::as_str).collect();
        match registry::unlisted(&listed)? {
            unlisted if unlisted.is_empty() => Ok(()),
            unlisted => Err(format!(
                "defined but not listed in trials! (tests/integration/main.rs), so never run: \
                 {unlisted:?}"
            )
            .into()),
        }
    }));
    let together = libtest_mimic::run(&args, together);
    let one_at_a_time = Arguments {
        test_threads: Some(1),
        ..args
    };
    let alone = libtest_mimic::run(&one_at_a_time, runnable(alone, &missing));
    if together.has_failed() || alone.has_failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The trials as they can run here: skipped loudly without BPF, failed when the setup is
/// missing where the tests are required.
fn runnable(trials: Vec<Trial>, missing: &Result<(), Missing>) -> Vec<Trial> {
    match missing {
        Ok(()) => trials,
        Err(Missing::Bpf(why)) => skip_loudly(trials, why),
        Err(Missing::Setup(why)) if required() => trials
            .into_iter()
            .map(|trial| {
                let why = why.clone();
                Trial::test(trial.name().to_string(), move || Err(why.into()))
            })
            .collect(),
        Err(Missing::Setup(why)) => skip_loudly(trials, why),
    }
}
