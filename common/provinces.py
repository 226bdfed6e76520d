"""The nine provinces of the federation and the names data services use for them."""

PROVINCES: tuple[str, ...] = (
    "hubei",
    "fujian",
    "sichuan",
    "shandong",
    "beijing",
    "zhejiang",
    "jiangsu",
    "guangdong",
    "shanghai",
)

# Tushare `stock_basic.area` spells provinces in Chinese; Shenzhen-registered firms say 深圳.
AREA_TO_PROVINCE: dict[str, str] = {
    "湖北": "hubei",
    "福建": "fujian",
    "四川": "sichuan",
    "山东": "shandong",
    "北京": "beijing",
    "浙江": "zhejiang",
    "江苏": "jiangsu",
    "广东": "guangdong",
    "深圳": "guangdong",
    "上海": "shanghai",
}


def check_province(name: str) -> str:
    """Return the canonical province name, or raise ValueError naming the valid ones."""
    key = name.strip().lower()
    if key not in PROVINCES:
        raise ValueError(f"unknown province {name!r}; expected one of: {', '.join(PROVINCES)}")
    return key
