// SPDX-License-Identifier: Apache-2.0
// moe_emu's fiber switch (x86-64 System V): saves the callee-saved registers on the current
// stack, stores the stack pointer in *save_sp (rdi), continues on to_sp (rsi) by popping the
// registers stored there and returning to the address below them.
#if !defined(__x86_64__)
#error "moe_emu's fiber switch is written for x86-64"
#endif

asm(R"(
  .text
  .globl moe_emu_switch
  .type moe_emu_switch, @function
moe_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size moe_emu_switch, .-moe_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
