"""User-facing errors: the CLIs print these as one clear message, never a traceback."""


class UserError(Exception):
    """A mistake in the user's input (file, flag, plan) with a message that says the fix."""


class PlanError(UserError, ValueError):
    """A plan that does not fit its model; the message lists every problem at once."""

    def __init__(self, problems: list[str], where: str = "plan"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{where} is invalid ({len(self.problems)} problem(s)):\n{lines}")
