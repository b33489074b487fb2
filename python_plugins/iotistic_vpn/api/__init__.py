"""The cloud API: customers reach their devices' ports through the gateway that holds them."""
