"""Speculative decoding: proposals checked by the target model in one forward pass, kept exactly
when plain decoding would have produced them."""
