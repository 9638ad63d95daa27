"""Knowledge distillation: losses (one per file, in `condense.distill.losses`) and adapters.

The `distill(student, teachers, data, cfg)` verb and its task are added by the integrator; this
package init stays light and imports nothing heavy.
"""
