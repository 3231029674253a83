"""The pricing catalog (SPEC 3) as frozen pydantic models.

Per-field rules (types, signs, ranges, required keys) live here as pydantic
constraints; rules that relate one part of the file to another (a meter named in
a plan exists, tiers ascend, trigger ids are unique, ...) live in `rules.checks`
and run on the whole catalog, so that a bad file reports every problem at once.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rules.checks import reference_problems


def _exact_decimal(value: object) -> object:
    """A YAML/JSON float goes through its shortest repr, so 0.1 stays exactly 0.1."""
    if isinstance(value, float):
        return str(value)
    return value


#: A non-negative amount of money (or a price per unit), exact.
Money = Annotated[Decimal, BeforeValidator(_exact_decimal), Field(ge=0)]
#: A non-negative quantity of a meter (a limit, a milestone), exact.
Quantity = Annotated[Decimal, BeforeValidator(_exact_decimal), Field(ge=0)]
#: A threshold level, in percent of a limit or of a spend cap.
Percent = Annotated[int, Field(ge=1, le=1000)]
#: A dotted path into an event, such as `data.tokens`.
Path = Annotated[str, Field(min_length=1, pattern=r"^[^.\s]+(\.[^.\s]+)*$")]
Name = Annotated[str, Field(min_length=1)]

Aggregation = Literal["count", "sum", "max", "unique_count", "latest"]

#: Minor units of the currencies that do not use 2 (ISO 4217); every other code uses 2.
_MINOR_UNITS: dict[str, int] = {
    "BIF": 0, "CLP": 0, "DJF": 0, "GNF": 0, "ISK": 0, "JPY": 0, "KMF": 0, "KRW": 0,
    "PYG": 0, "RWF": 0, "UGX": 0, "UYI": 0, "VND": 0, "VUV": 0, "XAF": 0, "XOF": 0,
    "XPF": 0, "BHD": 3, "IQD": 3, "JOD": 3, "KWD": 3, "LYD": 3, "OMR": 3, "TND": 3,
    "CLF": 4, "UYW": 4,
}  # fmt: skip


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Meter(_Frozen):
    """How matching events become one number per account and period (SPEC 3.1)."""

    event_type: Annotated[tuple[Name, ...], Field(min_length=1)]
    aggregation: Aggregation
    value: Path | None = None
    filter: dict[Path, str | int | float | bool | None] = Field(default_factory=dict)

    @field_validator("event_type", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value


class PerUnit(_Frozen):
    model: Literal["per_unit"]
    unit_price: Money


class Tier(_Frozen):
    """Units up to `up_to` (inclusive, above the previous tier's bound); `None` = no bound."""

    up_to: Annotated[Decimal, BeforeValidator(_exact_decimal), Field(gt=0)] | None
    unit_price: Money = Decimal(0)
    flat_price: Money = Decimal(0)


Tiers = Annotated[tuple[Tier, ...], Field(min_length=1)]


class Graduated(_Frozen):
    model: Literal["graduated"]
    tiers: Tiers


class Volume(_Frozen):
    model: Literal["volume"]
    tiers: Tiers


class Package(_Frozen):
    model: Literal["package"]
    package_size: Annotated[int, Field(gt=0)]
    package_price: Money


class Percentage(_Frozen):
    """`rate` is a fraction of the summed amount (0.029 = 2.9%), plus a fee per event."""

    model: Literal["percentage"]
    rate: Annotated[Money, Field(le=1)]
    fixed_fee: Money = Decimal(0)


PriceModel = Annotated[PerUnit | Graduated | Volume | Package | Percentage, Field(discriminator="model")]


class Plan(_Frozen):
    """`price` per month; `None` is a custom-priced plan (offers say "contact sales")."""

    price: Money | None
    annual_discount: Annotated[Decimal, BeforeValidator(_exact_decimal), Field(ge=0, lt=1)] = Decimal(0)
    seat_price: Money = Decimal(0)
    included_seats: Annotated[int, Field(ge=0)] = 0
    limits: dict[str, Quantity] = Field(default_factory=dict)
    charges: dict[str, PriceModel] = Field(default_factory=dict)
    features: tuple[Name, ...] = ()

    @property
    def custom_priced(self) -> bool:
        return self.price is None


class Addon(_Frozen):
    price: Money
    features: tuple[Name, ...] = ()
    min_tenure_days: Annotated[int, Field(ge=0)] = 0


class _Trigger(_Frozen):
    id: Name
    topic: Name | None = None
    cooldown_days: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _meter_shorthand(cls, data: Any) -> Any:
        """For a kind with `meters`: `meter: M` means `meters: [M]`, `meters: M` a list of one."""
        if "meters" not in cls.model_fields or not isinstance(data, dict):
            return data
        if "meter" in data and "meters" not in data:
            data = {k: v for k, v in data.items() if k != "meter"} | {"meters": (data["meter"],)}
        if isinstance(data.get("meters"), str):
            data = data | {"meters": (data["meters"],)}
        return data


class UsageThreshold(_Trigger):
    kind: Literal["usage_threshold"]
    meters: Annotated[tuple[Name, ...], Field(min_length=1)]
    at: Annotated[tuple[Percent, ...], Field(min_length=1)] = (80, 100)


class PowerUser(_Trigger):
    kind: Literal["power_user"]
    meter: Name
    min_per_week: Annotated[int, Field(ge=1)] = 3
    weeks: Annotated[int, Field(ge=1, le=12)] = 4
    cooldown_days: Annotated[int, Field(ge=0)] | None = 90


class FeatureRequest(_Trigger):
    kind: Literal["feature_request"]


class Milestone(_Trigger):
    kind: Literal["milestone"]
    meter: Name
    value: Annotated[Decimal, BeforeValidator(_exact_decimal), Field(gt=0)]


class SpendThreshold(_Trigger):
    kind: Literal["spend_threshold"]
    at: Annotated[tuple[Percent, ...], Field(min_length=1)] = (80, 100)


class Forecast(_Trigger):
    """SPEC 7.1: a `count` or `sum` meter's period quantity, projected at its average daily
    rate since the period start, reaches `at` % of the plan's limit within `within_days`
    (evaluated once at least `min_days_elapsed` days of the period have passed)."""

    kind: Literal["forecast"]
    meters: Annotated[tuple[Name, ...], Field(min_length=1)]
    at: Percent = 100
    within_days: Annotated[int, Field(ge=1, le=366)] = 7
    min_days_elapsed: Annotated[int, Field(ge=0, le=31)] = 3


class MeterCondition(_Frozen):
    """The period quantity of `meter` is at least `percent` % of the plan's limit for it."""

    meter: Name
    percent: Percent


class BillingCondition(_Frozen):
    billing: Literal["monthly", "annual"]


class PlansCondition(_Frozen):
    plans: Annotated[tuple[Name, ...], Field(min_length=1)]


class TenureCondition(_Frozen):
    min_tenure_days: Annotated[int, Field(ge=0)]


class FiredCondition(_Frozen):
    """The rule `fired` has fired for the account in the current period (or ever, for a
    kind that fires once per account)."""

    fired: Name


#: A condition's shape is told by its key; the union's tags are not keys of the file (the
#: loader drops them from error paths).
CONDITION_KEYS: dict[str, str] = {
    "meter": "meter_condition",
    "billing": "billing_condition",
    "plans": "plans_condition",
    "min_tenure_days": "tenure_condition",
    "fired": "fired_condition",
}


def _condition_tag(value: Any) -> str | None:
    keys = value.keys() if isinstance(value, dict) else value.__class__.model_fields.keys()
    for key, tag in CONDITION_KEYS.items():
        if key in keys:
            return tag
    return None


Condition = Annotated[
    Annotated[MeterCondition, Tag("meter_condition")]
    | Annotated[BillingCondition, Tag("billing_condition")]
    | Annotated[PlansCondition, Tag("plans_condition")]
    | Annotated[TenureCondition, Tag("tenure_condition")]
    | Annotated[FiredCondition, Tag("fired_condition")],
    Discriminator(
        _condition_tag,
        custom_error_type="condition_shape",
        custom_error_message="a condition is one of {meter, percent}, {billing}, {plans}, "
        "{min_tenure_days} or {fired}",
    ),
]


class Composite(_Trigger):
    """SPEC 7.1: fires when every condition of `when` holds."""

    kind: Literal["composite"]
    when: tuple[Condition, ...]

    @field_validator("when", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        # Checked before the items, so that a list of bad conditions is not also "too short".
        if isinstance(value, list | tuple) and not value:
            raise ValueError("an empty `when` has nothing to hold: list at least one condition")
        return value


Trigger = Annotated[
    UsageThreshold | PowerUser | FeatureRequest | Milestone | SpendThreshold | Forecast | Composite,
    Field(discriminator="kind"),
]

#: Validation context key that lets the loader run the cross-reference checks itself
#: (on the raw file, so that they report alongside the per-field errors).
SKIP_REFERENCES = "metering_skip_references"


class Catalog(_Frozen):
    """A whole rules file. Constructing one always runs the cross-reference checks."""

    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")]
    default_plan: Name
    meters: dict[Name, Meter] = Field(default_factory=dict)
    plans: Annotated[dict[Name, Plan], Field(min_length=1)]
    addons: dict[Name, Addon] = Field(default_factory=dict)
    triggers: tuple[Trigger, ...] = ()

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> Catalog:
        if isinstance(info.context, dict) and info.context.get(SKIP_REFERENCES):
            return self
        problems = reference_problems(self.model_dump(mode="json"))
        if problems:
            raise ValueError("; ".join(map(str, problems)))
        return self

    @property
    def minor_unit(self) -> int:
        """Digits after the decimal point of the currency (USD 2, JPY 0, KWD 3)."""
        return _MINOR_UNITS.get(self.currency, 2)

    @property
    def version(self) -> str:
        """Short hash of the canonical content: equal catalogs share it, whatever the formatting."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]
