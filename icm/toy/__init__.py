"""The paper's theory on toy models: Model 1 and Example 1 with the scaling group (`model1`),
Model 2 and the trace ratio (`model2`), and gradient dynamics on over-parameterized products
(`dynamics`)."""
