"""Everything the notebooks and the report *show*: tables, charts and the ipywidgets explorer.

Display only: nothing here measures, writes records or decides.  Charts return matplotlib
``Figure`` objects built without pyplot's global state (``matplotlib.figure.Figure``), so the report
can render them to PNG and the notebooks can display them.  There is one chart per kind:
``accuracy_figure`` draws top-1 against size or latency for any list of variants, with the Pareto
front, the accuracy budget and the recommended variant, in notebook 02 and in the report alike.

The modules: ``core`` (colours, ``Table``, ``Chart``, the shared chart helpers), ``accuracy`` (the accuracy
chart), and one module of views per stage: ``baseline`` (01), ``quantization`` (02), ``distillation`` (03),
``architecture`` (04), ``benchmark`` (05).  Every public name is importable from ``playbook.views`` itself.
"""
from __future__ import annotations

from playbook.views.accuracy import (CHART_TEXT, MAX_EDGE_LABELS, STAGE_MARKERS, accuracy_alt, accuracy_chart,
                                     accuracy_figure)
from playbook.views.architecture import (architecture_figure, architecture_table, explain_criterion, explain_mobile,
                                         explain_scan_demo, family_plan_table, family_table, family_training_table,
                                         mobile_fidelity_table, placement_table, scan_demo_table, scan_findings_table,
                                         scan_overview_table, scan_rules_table)
from playbook.views.baseline import plot_confusion, plot_history
from playbook.views.benchmark import (bench_measurements_table, bench_settings_table, bench_targets_table,
                                      compute_plan_table, five_axis_table, host_peak_table, latency_distributions,
                                      measurements_of, ratio_table, work_table)
from playbook.views.core import (AXIS_LABELS, PALETTE, STAGE_COLOURS, TECHNIQUE_COLOURS, Chart, Table, figure_png,
                                 japanese_font, results_table, variant_row)
from playbook.views.distillation import (distillation_seed_table, distillation_sweep_table, explain_seeds,
                                         explain_shipped, plot_distillation_sweeps, plot_seed_comparison,
                                         plot_soft_labels, student_plan_table, student_table)
from playbook.views.quantization import (bit_allocation_table, bit_search_table, comparison_table, coreai_table,
                                         explain_coreai, explain_variant, explore, findings, headline_table,
                                         keep_curve_table, package_overhead_bytes, plot_bit_allocation,
                                         plot_sensitivity, quantization_table, recipe_table, sensitivity_table,
                                         smallest_within)

__all__ = [
    # core
    "AXIS_LABELS", "PALETTE", "STAGE_COLOURS", "TECHNIQUE_COLOURS", "Chart", "Table", "figure_png", "japanese_font",
    "results_table", "variant_row",
    # the accuracy chart
    "CHART_TEXT", "MAX_EDGE_LABELS", "STAGE_MARKERS", "accuracy_alt", "accuracy_chart", "accuracy_figure",
    # stage 01
    "plot_confusion", "plot_history",
    # stage 02
    "bit_allocation_table", "bit_search_table", "comparison_table", "coreai_table", "explain_coreai", "explain_variant",
    "explore", "findings",
    "headline_table", "keep_curve_table", "package_overhead_bytes", "plot_bit_allocation", "plot_sensitivity",
    "quantization_table", "recipe_table", "sensitivity_table", "smallest_within",
    # stage 03
    "distillation_seed_table", "distillation_sweep_table", "explain_seeds", "explain_shipped",
    "plot_distillation_sweeps", "plot_seed_comparison", "plot_soft_labels", "student_plan_table", "student_table",
    # stage 04
    "architecture_figure", "architecture_table", "explain_criterion", "explain_mobile", "explain_scan_demo",
    "family_plan_table", "family_table", "family_training_table", "mobile_fidelity_table", "placement_table",
    "scan_demo_table", "scan_findings_table", "scan_overview_table", "scan_rules_table",
    # stage 05
    "bench_measurements_table", "bench_settings_table", "bench_targets_table", "compute_plan_table", "five_axis_table",
    "host_peak_table", "latency_distributions", "measurements_of", "ratio_table", "work_table",
]
