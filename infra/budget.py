"""Cost guard: a monthly AWS budget that emails before the money is spent."""

from __future__ import annotations

import pulumi
import pulumi_aws as aws

from infra.config import BudgetConfig


def notifications(email: str) -> list[dict]:
    """Warn at 80% of actual spend and when the forecast passes 100%."""
    return [
        {
            "comparison_operator": "GREATER_THAN",
            "notification_type": notification_type,
            "threshold": threshold,
            "threshold_type": "PERCENTAGE",
            "subscriber_email_addresses": [email],
        }
        for notification_type, threshold in (("ACTUAL", 80), ("FORECASTED", 100))
    ]


class CostGuard(pulumi.ComponentResource):
    """Monthly cost budget for the account (use one AWS account per stack)."""

    def __init__(
        self, name: str, cfg: BudgetConfig, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlre:infra:CostGuard", name, None, opts)
        self.budget = aws.budgets.Budget(
            f"{name}-monthly",
            budget_type="COST",
            limit_amount=str(cfg.monthly_limit_usd),
            limit_unit="USD",
            time_unit="MONTHLY",
            notifications=notifications(cfg.alert_email),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"budget_name": self.budget.name})
