"""The example everyone runs: the original article's customer profile and ten products."""

from __future__ import annotations

from ..models import RankingRequest

PROFILE = """Customer ID: 12345
Recent Purchases: [Laptop, Wireless Headphones, Smart Watch]
Frequently Browsed Categories: [Electronics, Books, Fitness Equipment]
Product Ratings: {Laptop: 5 stars, Wireless Headphones: 4 stars}
Recent Search History: [best budget laptops 2023, latest sci-fi books, yoga mats]
Preferred Brands: [Apple, AllBirds, Bench]
Responses to Previous Recommendations: {Philips: Not Interested, Adidas: Not Interested}
Loyalty Program Status: Gold Member
Average Monthly Spend: $500
Preferred Shopping Times: Weekend Evenings"""

PRODUCTS = [
    "Apple MacBook Air (2023) - Latest model, high performance, portable",
    "Sony WH-1000XM4 Wireless Headphones - Noise-canceling, long battery life",
    "Apple Watch Series 7 - Advanced fitness tracking, seamless integration with Apple ecosystem",
    "Kindle Oasis - Premium e-reader with adjustable warm light",
    "AllBirds Wool Runners - Comfortable, eco-friendly sneakers",
    "Manduka PRO Yoga Mat - High-quality, durable, eco-friendly",
    "Bench Hooded Jacket - Stylish, durable, suitable for outdoor activities",
    "GoPro HERO9 Black - 5K video, waterproof, for action photography",
    "Nespresso Vertuo Next Coffee Machine - Quality coffee, easy to use, compact design",
    "Project Hail Mary by Andy Weir - Latest sci-fi book from a renowned author",
]

# The original article's measurements, with gpt-3.5-turbo-1106.
ARTICLE_FIRST_ITEM_SECONDS = 4.33
ARTICLE_UNSTREAMED_SECONDS = 8.63


def example_request(**overrides: object) -> RankingRequest:
    data: dict[str, object] = {
        "profile": PROFILE,
        "products": [{"product_id": str(i), "product_name": name} for i, name in enumerate(PRODUCTS, 1)],
    }
    data.update(overrides)
    return RankingRequest.model_validate(data)
