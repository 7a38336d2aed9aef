"""Data: datasets, splits, class names and templates."""

from .templates import COOP_TEMPLATES, TEMPLATE_SET_NAMES, check_templates, template_set

__all__ = ["COOP_TEMPLATES", "TEMPLATE_SET_NAMES", "check_templates", "template_set"]
